"""Build an *uncurated* pool from clean images by planting known junk.

The planted truth is stored in each sample's meta (``planted``: original,
exact_dup, near_dup_jpeg, near_dup_shift, blank, noise, corrupt; ``of``: the key
of the source image), so curation can be scored for precision and recall on
real images instead of being trusted.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curation.shards import Sample


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shift_image(pixels: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, filling the uncovered border by edge replication."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(pixels, [(pad, pad), (pad, pad)] + [(0, 0)] * (pixels.ndim - 2), mode="edge")
    h, w = pixels.shape[:2]
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def plant_pool(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    exact_duplicates: int,
    near_duplicates: int,
    blank: int,
    noise: int,
    corrupt: int,
    seed: int = 0,
) -> list[Sample]:
    """Originals (as PNG) plus planted junk, with shuffled keys.

    Keys are a random permutation, so a planted copy sorts before its original
    about half the time, as in real crawls; curation then keeps the copy and
    removes the original, which is still correct (one of the group survives).

    Args:
        images: uint8 [N, H, W] or [N, H, W, 3] clean images.
        labels: int [N] class labels (-1 if unknown).
    """
    rng = np.random.default_rng(seed)
    n = len(images)
    rows: list[tuple[bytes, str, int, dict]] = []  # payload, ext, label, meta (key assigned later)
    for i in range(n):
        rows.append((encode_png(images[i]), "png", int(labels[i]), {"planted": "original", "index": i}))

    def source_index() -> int:
        return int(rng.integers(n))

    for _ in range(exact_duplicates):
        i = source_index()  # same pixels, different file bytes
        rows.append((encode_png(images[i], compress_level=int(rng.integers(0, 10))), "png", int(labels[i]),
                     {"planted": "exact_dup", "index": i}))
    for j in range(near_duplicates):
        i = source_index()
        if j % 3 == 0:  # re-encoded at another quality
            payload, kind = encode_jpeg(images[i], quality=int(rng.integers(60, 95))), "near_dup_jpeg"
            ext = "jpg"
        elif j % 3 == 1:  # translated by 1-2 px
            dx, dy = (int(v) * int(rng.integers(1, 3)) for v in rng.choice([-1, 1], size=2))
            payload, kind, ext = encode_png(shift_image(images[i], dx, dy)), "near_dup_shift", "png"
        else:  # resized by a few pixels
            h, w = images[i].shape[:2]
            side = int(rng.choice([-4, -3, -2, 2, 3, 4]))
            small = np.asarray(Image.fromarray(images[i]).resize((w + side, h + side), Image.Resampling.BILINEAR))
            payload, kind, ext = encode_png(small), "near_dup_resize", "png"
        rows.append((payload, ext, int(labels[i]), {"planted": kind, "index": i}))
    shape = images.shape[1:]
    for _ in range(blank):
        value = int(rng.integers(0, 256))
        rows.append((encode_png(np.full(shape, value, np.uint8)), "png", -1, {"planted": "blank"}))
    for _ in range(noise):
        rows.append((encode_png(rng.integers(0, 256, size=shape, dtype=np.uint8)), "png", -1, {"planted": "noise"}))
    for j in range(corrupt):
        good = encode_png(images[source_index()])
        payload = [good[: len(good) // 2], b"", b"this is not an image", rng.bytes(64)][j % 4]
        rows.append((payload, "png", -1, {"planted": "corrupt"}))

    order = rng.permutation(len(rows))
    keys = [f"img{rank:07d}" for rank in range(len(rows))]
    samples: list[Sample] = []
    original_key = {}
    for rank, idx in enumerate(order):
        payload, ext, label, meta = rows[idx]
        if meta["planted"] == "original":
            original_key[meta["index"]] = keys[rank]
        samples.append(Sample(keys[rank], payload, ext, label, meta))
    for s in samples:
        if "index" in s.meta:
            s.meta["of"] = original_key[s.meta.pop("index")]
    return samples
