"""Small real inputs for the ingest tests: PNG folders from the MNIST digits, hand-made tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from curation.planting import encode_png


def write_digit_folder(root: Path, images: np.ndarray, labels: np.ndarray, n: int) -> dict[str, bytes]:
    """``root/<digit>/<i>.png`` for the first ``n`` digits; returns key -> file bytes (key = the relative
    path without extension, ``d<digit>/<i>``, as ``sslpipe shard`` names them)."""
    files: dict[str, bytes] = {}
    for i in range(n):
        cls = f"d{int(labels[i])}"
        data = encode_png(images[i])
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / f"{i:05d}.png").write_bytes(data)
        files[f"{cls}/{i:05d}"] = data
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


def write_nested_tree(root: Path, images: np.ndarray, n: int, depth: int = 4) -> dict[str, bytes]:
    """A date-partitioned tree of ``n`` PNG digits, ``depth`` folders deep (``2023/01/05/cam1/00007.png``),
    plus a few files at the top; returns key (relative path without extension) -> file bytes."""
    files: dict[str, bytes] = {}
    for i in range(n):
        data = encode_png(images[i])
        parts = [f"{2023 + i % 2}", f"{1 + i % 3:02d}", f"{1 + i % 5:02d}", f"cam{i % 2}"][:depth]
        rel = "/".join(parts + [f"{i:05d}"]) if i % 25 else f"top{i:05d}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{rel}.png").write_bytes(data)
        files[rel] = data
    return files
