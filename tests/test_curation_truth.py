"""Curation scored against planted truth on real images (CIFAR-10 from SSLPIPE_CIFAR10, MNIST always)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from curation.metrics import normalized_entropy
from curation.planting import plant_pool
from curation.shards import Sample, write_shards
from curation.truth import score_duplicates
from pipelines.config import load_config
from pipelines.curate import curate


def _cifar(root: Path, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(os.listdir(root / "train"))
    files = [(root / "train" / c / f, i)
             for i, c in enumerate(classes) for f in sorted(os.listdir(root / "train" / c))[:per_class]]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files]), np.array([i for _, i in files]), classes


def test_exact_and_near_duplicates_reach_95_precision_and_recall(ray_session, cifar10_root: Path, tmp_path: Path) -> None:
    """Planted copies: same pixels in another file, JPEG re-encodes, 1-2 px shifts, small resizes."""
    x, y, _ = _cifar(cifar10_root, 100)
    samples = plant_pool(x, y, exact_duplicates=100, near_duplicates=180, blank=5, noise=5, corrupt=5, seed=3)
    shards = [str(p) for p in write_shards(samples, tmp_path / "pool", 400)]
    # pHash distances here are even (63 median-thresholded bits); 6 is the step above 4
    result = curate(shards, tmp_path / "out", load_config(None, ["curate.near_dedup_max_hamming=6"]).curate)
    rows = pq.read_table(result.manifest_path).to_pylist()

    exact = score_duplicates(rows, ("exact_dup",))
    assert exact["precision"] >= 0.95 and exact["recall"]["exact_dup"] >= 0.95, exact
    near = score_duplicates(rows, ("near_dup",))  # all near-duplicate stages together
    assert near["precision"] >= 0.95, near
    for kind in ("near_dup_jpeg", "near_dup_shift", "near_dup_resize"):
        assert near["recall"][kind] >= 0.95, (kind, near)


def _balance_gain(samples: list[Sample], labels: np.ndarray, tmp_path: Path, levels: str) -> tuple[float, float, float]:
    shards = [str(p) for p in write_shards(samples, tmp_path / "pool", 500)]
    # dedup off: "half" is then exactly half of the input, like the random half it is compared with
    cfg = load_config(None, ["curate.embedder=random_convnet", "curate.balance_fraction=0.5", "curate.near_dedup=false",
                             "curate.exact_dedup=false", f"curate.balance_levels={levels}"]).curate
    result = curate(shards, tmp_path / "out", cfg)
    kept = [r["label"] for r in pq.read_table(result.manifest_path).to_pylist() if r["kept"]]
    assert len(kept) == round(len(samples) / 2)
    rng = np.random.default_rng(0)
    k = int(labels.max()) + 1
    randoms = [normalized_entropy(labels[rng.choice(len(labels), len(labels) // 2, replace=False)], k) for _ in range(20)]
    return normalized_entropy(np.array(kept), k), float(np.mean(randoms)), float(np.std(randoms))


def test_balanced_half_of_a_long_tailed_cifar_pool_beats_a_random_half(ray_session, cifar10_root: Path, tmp_path: Path) -> None:
    classes = sorted(os.listdir(cifar10_root / "train"))
    counts = [int(round(400 * 0.01 ** (c / 9))) for c in range(10)]  # 400 ... 4: exponential, 100:1
    samples, labels = [], []
    for c, n in enumerate(counts):
        for f in sorted(os.listdir(cifar10_root / "train" / classes[c]))[:n]:
            samples.append(Sample(f"{classes[c]}_{f[:-4]}", (cifar10_root / "train" / classes[c] / f).read_bytes(), "jpg", c))
            labels.append(c)
    # three levels, as in Vo et al.; the embedder is the weights-free random conv net, so the gain is modest
    balanced, random_mean, random_std = _balance_gain(samples, np.array(labels), tmp_path, "[200,20,4]")
    assert balanced > random_mean + max(0.01, random_std), (balanced, random_mean, random_std)
