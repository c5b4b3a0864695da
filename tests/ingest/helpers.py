"""Small real inputs for the ingest tests: PNG folders from the MNIST digits, hand-made tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from curation.planting import encode_png


def write_digit_folder(root: Path, images: np.ndarray, labels: np.ndarray, n: int) -> dict[str, bytes]:
    """``root/<digit>/<i>.png`` for the first ``n`` digits; returns key -> file bytes (key = class_stem)."""
    files: dict[str, bytes] = {}
    for i in range(n):
        cls = f"d{int(labels[i])}"
        data = encode_png(images[i])
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / f"{i:05d}.png").write_bytes(data)
        files[f"{cls}_{i:05d}"] = data
    return files


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar holding ``members`` in the given order (no sorting: tests control the layout)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
