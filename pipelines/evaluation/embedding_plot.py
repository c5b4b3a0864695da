"""2-D views of an embedding (PCA and t-SNE), coloured by label, saved as PNG.

Why: a picture of the embedding catches failures that a single accuracy
hides (collapse to a point or a line, one class scattered everywhere, a
cluster per augmentation instead of per class). PCA shows the global,
linear structure faithfully; t-SNE shows local neighbourhoods (what kNN
sees) but distorts distances, so both are drawn side by side.

Figures are drawn with matplotlib's object API on an Agg canvas (no
pyplot), so nothing global is touched and it works headless inside Ray
workers and tests. t-SNE is O(n log n) per iteration and slow on few cores,
hence the subsample (≤ 2000 points by default).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

__all__ = ["subsample", "project_2d", "plot_embedding", "png_to_data_uri"]

Method = Literal["pca", "tsne"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows, drawn without replacement."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def project_2d(features: np.ndarray, method: Method, seed: int = 0) -> np.ndarray:
    """[n, 2] coordinates by PCA or t-SNE (cosine-normalised features, as kNN uses them).

    For t-SNE the features are first reduced to 50 PCA dimensions, the usual
    step that removes noise dimensions and makes t-SNE several times faster.
    """
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    if n < 3:
        raise ValueError("need at least 3 points to project")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        if d > 50 and n > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, (n - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
        return tsne.fit_transform(x)
    raise ValueError(f"unknown method {method!r}")


def _class_colour(c: int, num_classes: int) -> tuple[float, float, float, float]:
    """Distinct qualitative colours for ≤ 20 classes; beyond that a continuous map (neighbouring ids look alike)."""
    if num_classes <= 10:
        return colormaps["tab10"](c)  # integer index = c-th listed colour
    if num_classes <= 20:
        return colormaps["tab20"](c)
    return colormaps["turbo"](c / max(num_classes - 1, 1))


def plot_embedding(
    features: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    methods: Sequence[Method] = ("pca", "tsne"),
    max_points: int = 2000,
    seed: int = 0,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw one panel per method (default PCA | t-SNE) and save a PNG at ``path``.

    Args:
        features: [N, D] embedding.
        labels: [N] integer labels used for colour.
        path: output file; parent folders are created.
        methods: panels to draw, in order.
        max_points: random subsample size (same points in every panel).
        seed: subsample, PCA and t-SNE seed.
        title: figure title, e.g. the model and dataset names.
        class_names: legend names per class id (legend shown for ≤ 20 classes).

    Returns:
        The path written.
    """
    features = np.asarray(features)
    labels = np.asarray(labels).astype(np.int64)
    if features.shape[0] != labels.shape[0]:
        raise ValueError("features and labels differ in length")
    if not methods:
        raise ValueError("no method given")
    idx = subsample(features.shape[0], max_points, seed)
    x, y = features[idx], labels[idx]
    classes = np.unique(y)
    num_classes = int(labels.max()) + 1

    fig = Figure(figsize=(5.5 * len(methods), 5.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        xy = project_2d(x, method, seed)
        for c in classes:
            m = y == c
            colour = _class_colour(int(c), num_classes)
            name = class_names[c] if class_names is not None else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=colour, label=name, linewidths=0, alpha=0.8)
        ax.set_title(f"{'PCA' if method == 'pca' else 't-SNE'} ({len(idx)} points)")
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def png_to_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` for inlining the figure in a self-contained HTML report."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
