"""64-bit DCT perceptual hash (pHash), vectorised over a batch, plus a
shift-tolerant variant.

Why a pHash: near-duplicate detection must survive re-encoding (JPEG), small
rescales and mild colour/brightness changes, which change every byte of a
sha256 but barely move the lowest spatial frequencies of the luminance.

Recipe (per image, all in numpy, no scipy):

1. area-average resize to 32x32 (a linear map ``R_h @ img @ R_w.T`` built from
   the exact pixel-overlap fractions, so it works for any H, W and is one
   ``einsum`` over a same-size batch);
2. orthonormal 2-D DCT-II via the 32x32 DCT matrix: ``C @ img @ C.T``;
3. keep the top-left 8x8 block (lowest frequencies);
4. threshold each coefficient against the median of the 63 AC coefficients.
   The DC term (mean brightness) is excluded from the median and its bit is
   forced to 0, so the hash is invariant to a global brightness offset; 63 of
   the 64 bits carry information.  Bit ``8*u + v`` is coefficient ``(u, v)``.

Robustness.  JPEG re-encodes and small resizes move the hash by a few bits,
but **a 1-2 px shift moves it about as far as an unrelated image's nearest
neighbour**, so no threshold separates "shifted copy" from "different image"
(tests/curation/test_phash.py holds the bounds; the distributions on real
MNIST digits: docs/BENCHMARKS.md, ``bench/code_figures.py phash``).

Shift-tolerant option (:func:`phash_shifts`): hash a *centre crop* (margin
``m``) and additionally the same-size crops displaced by every ``(dy, dx)`` in
``[-m, m]^2``.  If ``B`` is ``A`` translated by ``(a, b)`` with ``|a|,|b| <= m``
then ``B``'s centre crop *is* ``A``'s crop displaced by ``(-a, -b)`` (the
padding introduced by the shift lies outside the crop), so
``min_s hamming(shifts_A[s], centre_B)`` is ~0 (same test and bench).  Cost:
``(2m+1)^2`` hashes per image (25 for m=2), still only matrix products.  The
price: the min over 25 hashes also pulls unrelated images closer, and content
within ``m`` px of the border is ignored.
:func:`curation.near_dedup.find_near_duplicates` accepts these variants via
``query_hashes``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["phash_batch", "phash_shifts", "hamming", "min_shift_hamming", "HASH_SIZE"]

HASH_SIZE = 32  # resize target
_LOW = 8  # low-frequency block side
_BIT_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


@lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix averaging input cells over each output cell.

    Output cell ``i`` covers input interval ``[i*s, (i+1)*s)`` with
    ``s = n_in / n_out``; entries are the overlap lengths divided by ``s`` so
    rows sum to 1 (for upsampling this degenerates to nearest/linear-ish).
    """
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    hi = lo + s
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return (overlap / s).astype(np.float64)


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` such that ``C @ v`` is the DCT of ``v``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


@lru_cache(maxsize=64)
def _projection(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused resize+DCT, low block only: ``(P_h [8,h], P_w [8,w])``."""
    c = _dct_matrix(HASH_SIZE)[:_LOW]
    return c @ _area_matrix(h, HASH_SIZE), c @ _area_matrix(w, HASH_SIZE)


def _bits_to_uint64(low: np.ndarray) -> np.ndarray:
    """[N, 8, 8] low-frequency coefficients -> [N] uint64 hash."""
    flat = low.reshape(low.shape[0], _LOW * _LOW)
    med = np.median(flat[:, 1:], axis=1, keepdims=True)
    bits = flat > med
    bits[:, 0] = False  # DC: brightness, deliberately ignored
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def _low_freq(gray: np.ndarray) -> np.ndarray:
    """[N, H, W] -> [N, 8, 8] low-frequency DCT block of the 32x32 resize."""
    n, h, w = gray.shape
    ph, pw = _projection(h, w)
    g = gray.astype(np.float64, copy=False)
    return np.einsum("uh,nhw,vw->nuv", ph, g, pw, optimize=True)


def _as_gray_list(gray: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray] | np.ndarray:
    if isinstance(gray, np.ndarray):
        if gray.ndim == 2:
            gray = gray[None]
        if gray.ndim != 3:
            raise ValueError(f"expected [N,H,W] grayscale, got shape {gray.shape}")
        return gray
    out = [np.asarray(g) for g in gray]
    for g in out:
        if g.ndim != 2:
            raise ValueError(f"expected 2-D grayscale arrays, got shape {g.shape}")
    return out


def phash_batch(gray: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """64-bit DCT pHash of each grayscale image.

    Args:
        gray: ``[N, H, W]`` array (uint8 or float, any H, W >= 1) or a list of
            2-D arrays of possibly different sizes (grouped by size internally
            so each group is one batched matrix product).

    Returns:
        ``[N]`` uint64 hashes, in input order.
    """
    gray = _as_gray_list(gray)
    if isinstance(gray, np.ndarray):
        if gray.shape[0] == 0:
            return np.zeros(0, dtype=np.uint64)
        return _bits_to_uint64(_low_freq(gray))
    out = np.zeros(len(gray), dtype=np.uint64)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(gray):
        by_shape.setdefault(g.shape, []).append(i)
    for idx in by_shape.values():
        out[idx] = _bits_to_uint64(_low_freq(np.stack([gray[i] for i in idx])))
    return out


def phash_shifts(gray: np.ndarray, max_shift: int = 2) -> np.ndarray:
    """Hashes of centre crops displaced by every shift in ``[-m, m]^2``.

    Args:
        gray: ``[N, H, W]`` same-size batch (``H, W > 2*max_shift``).
        max_shift: crop margin ``m`` = largest tolerated translation in px.

    Returns:
        ``[N, (2m+1)^2]`` uint64; column 0 is the undisplaced centre crop (the
        hash to *index*), the other columns are the displaced crops (the hashes
        to *query* with).  See module docstring for why this is shift-robust.
    """
    checked = _as_gray_list(gray)
    gray = checked if isinstance(checked, np.ndarray) else np.stack(checked)
    m = int(max_shift)
    n, h, w = gray.shape
    if h <= 2 * m or w <= 2 * m:
        raise ValueError(f"image {h}x{w} too small for max_shift={m}")
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1) if (dy, dx) != (0, 0)]
    out = np.empty((n, len(shifts)), dtype=np.uint64)
    for s, (dy, dx) in enumerate(shifts):
        crop = gray[:, m + dy : h - m + dy, m + dx : w - m + dx]
        out[:, s] = _bits_to_uint64(_low_freq(crop))
    return out


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Elementwise (broadcasting) Hamming distance between uint64 hashes."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def min_shift_hamming(shifts_a: np.ndarray, centre_b: np.ndarray) -> np.ndarray:
    """``min_s hamming(shifts_a[..., s], centre_b)``: shift-tolerant distance.

    ``shifts_a`` is ``[..., S]`` from :func:`phash_shifts`, ``centre_b`` is
    ``[...]`` (column 0 of another :func:`phash_shifts` output).
    """
    return hamming(shifts_a, np.asarray(centre_b, dtype=np.uint64)[..., None]).min(axis=-1)
