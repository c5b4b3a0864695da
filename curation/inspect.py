"""Ray Data UDF for the first curation pass: decode, validate, hash.

It returns metadata only (no image bytes), so the driver can collect the
metadata of millions of samples for the global dedup decisions while the
pixels stay in the shards; the second pass re-reads the shards and writes the
kept samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.phash import phash_batch
from curation.validate import ImageCheck, ValidationRules, check_image

METADATA_COLUMNS = ("key", "source", "label", "meta", "reason", "width", "height", "pixel_sha256", "phash")


def inspect_batch(batch: dict[str, np.ndarray], rules: ValidationRules) -> dict[str, np.ndarray]:
    """Per row: read error or validation reason, size, pixel sha256 and 64-bit pHash (0 if not decoded)."""
    checks: list[ImageCheck] = []
    for data, read_error in zip(batch["image"], batch["read_error"]):
        checks.append(ImageCheck(read_error) if read_error else check_image(data, rules))
    hashes = np.zeros(len(checks), dtype=np.uint64)
    ok = [i for i, c in enumerate(checks) if c.gray is not None]
    if ok:
        hashes[ok] = phash_batch([checks[i].gray for i in ok])
    out: dict[str, Any] = {
        "key": batch["key"],
        "source": batch["source"],
        "label": batch["label"].astype(np.int64),
        "meta": batch["meta"],
        "reason": np.array([c.reason for c in checks], dtype=object),
        "width": np.array([c.width for c in checks], dtype=np.int64),
        "height": np.array([c.height for c in checks], dtype=np.int64),
        "pixel_sha256": np.array([c.pixel_sha256 for c in checks], dtype=object),
        "phash": hashes,
    }
    return out
