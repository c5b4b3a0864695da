"""Ray Data UDF for the first curation pass: decode, validate, hash.

It returns metadata only (no image bytes), so the driver can collect the
metadata of millions of samples for the global dedup decisions while the
pixels stay in the shards; the second pass re-reads the shards and writes the
kept samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from PIL import Image

from curation.phash import phash_batch, phash_shifts
from curation.validate import ImageCheck, ValidationRules, check_image

METADATA_COLUMNS = ("key", "source", "label", "meta", "reason", "width", "height", "pixel_sha256", "phash")


#: side of the grayscale copy the shift-robust hash works on (a 32 px centre crop plus the shift margin)
SHIFT_HASH_CROP = 32


def _shift_hashes(grays: list[np.ndarray], max_shift: int) -> np.ndarray:
    """[N, (2m+1)^2] hashes of displaced centre crops (column 0 = the undisplaced crop).

    Images are first resized to a common side so one batched DCT serves them all; a shift
    of 1-2 px in a large image is sub-pixel after the resize, so it needs no robustness."""
    side = SHIFT_HASH_CROP + 2 * max_shift
    same = np.stack([np.asarray(Image.fromarray(g).resize((side, side), Image.Resampling.BILINEAR)) for g in grays])
    return phash_shifts(same, max_shift)


def inspect_batch(batch: dict[str, np.ndarray], rules: ValidationRules, shift_robust: int = 0) -> dict[str, np.ndarray]:
    """Per row: read error or validation reason, size, pixel sha256 and 64-bit pHash (0 if not decoded).

    With ``shift_robust = m > 0`` the hash is taken on a centre crop and a ``phash_shifts`` column holds
    the hashes of crops displaced by up to m px, which near-duplicate search uses as queries."""
    checks: list[ImageCheck] = []
    for data, read_error in zip(batch["image"], batch["read_error"]):
        checks.append(ImageCheck(read_error) if read_error else check_image(data, rules))
    hashes = np.zeros(len(checks), dtype=np.uint64)
    n_shifts = (2 * shift_robust + 1) ** 2 if shift_robust else 1
    shifted = np.zeros((len(checks), n_shifts), dtype=np.uint64)
    ok = [i for i, c in enumerate(checks) if c.gray is not None]
    grays = [gray for gray in (c.gray for c in checks) if gray is not None]  # one per index in ``ok``, same order
    if ok and shift_robust:
        shifted[ok] = _shift_hashes(grays, shift_robust)
        hashes[ok] = shifted[ok, 0]
    elif ok:
        hashes[ok] = phash_batch(grays)
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
    if shift_robust:
        out["phash_shifts"] = shifted
    return out
