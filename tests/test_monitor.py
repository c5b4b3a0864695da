"""The online monitor scores a random, stratified sample of the labelled evaluation set (issue #31), and
its samples are a pure function of the set and the seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import load_config
from pipelines.monitor import OnlineMonitor, allocate, random_sample, stratified_sample

# --------------------------------------------------------------------------- drawing the samples (no Ray)


def test_allocation_is_proportional_sums_to_n_and_keeps_every_class() -> None:
    counts = np.array([500, 300, 150, 40, 10])
    alloc = allocate(counts, 100)
    assert alloc.sum() == 100 and (alloc >= 1).all() and (alloc <= counts).all()
    assert np.abs(alloc - counts * 100 / counts.sum()).max() <= 1  # largest remainder: within one of the quota
    assert allocate(np.array([1000, 1, 1]), 3).tolist() == [1, 1, 1]  # a rare class still gets its one
    assert allocate(counts, 5000).tolist() == counts.tolist()  # more asked than there is: everything


def test_stratified_sample_spans_every_class_in_proportion_whatever_the_order() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), [400, 300, 200, 100, 100, 100, 50, 50, 50, 50])  # class-sorted, skewed
    labels = np.concatenate([labels, np.full(37, -1)])  # unlabelled rows in an evaluation set are never drawn
    keys = np.array([f"k{i:05d}" for i in range(len(labels))], dtype=object)
    idx = stratified_sample(keys, labels, 200, seed=3)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    drawn = np.bincount(labels[idx], minlength=10)
    assert (drawn >= 1).all() and np.abs(drawn - np.bincount(labels[labels >= 0]) * 200 / 1400).max() <= 1
    # the same set read in another order gives the same rows; another seed gives other rows
    perm = rng.permutation(len(keys))
    again = stratified_sample(keys[perm], labels[perm], 200, seed=3)
    assert sorted(keys[perm][again].tolist()) == sorted(keys[idx].tolist())
    assert sorted(keys[stratified_sample(keys, labels, 200, seed=4)].tolist()) != sorted(keys[idx].tolist())
    # not the first rows of each class: a random draw inside the class
    assert not set(idx[labels[idx] == 0].tolist()) <= set(range(40))


def test_pool_sample_ignores_labels_and_read_order() -> None:
    keys = np.array([f"p{i:04d}" for i in range(1000)], dtype=object)
    idx = random_sample(keys, 128, seed=1)
    perm = np.random.default_rng(5).permutation(1000)
    assert sorted(keys[perm][random_sample(keys[perm], 128, seed=1)].tolist()) == sorted(keys[idx].tolist())
    assert len(random_sample(keys, 5000, seed=1)) == 1000


# --------------------------------------------------------------------------- the monitor against the evaluate stage


def _class_folder(root: Path, images: np.ndarray, labels: np.ndarray, per_class: int, start: int) -> Path:
    """root/d<k>/NNNN.png: ``sslpipe shard`` sorts keys by class folder, so its shards are class-sorted."""
    taken = {k: 0 for k in range(10)}
    for i in range(start, len(labels)):
        k = int(labels[i])
        if taken[k] < per_class:
            (root / f"d{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / f"d{k}" / f"{i:05d}.png")
            taken[k] += 1
        if all(v == per_class for v in taken.values()):
            break
    return root


@pytest.mark.slow
def test_online_knn_matches_the_evaluate_stage_on_class_sorted_shards(ray_session, mnist_digits, tmp_path: Path) -> None:
    """Shards cut from class folders hold one or two classes each. The monitor's kNN (a sample of the
    queries) must agree with the evaluate stage's (every query, same encoder, same k and T) within the
    sampling noise of its query sample, and its queries must cover every class."""
    from pipelines.run import run_pipeline

    images, labels = mnist_digits
    bank = _class_folder(tmp_path / "bank", images, labels, per_class=60, start=0)
    queries = _class_folder(tmp_path / "queries", images, labels, per_class=50, start=3000)
    n_queries = 150
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.source={bank}", f"eval.bank_source={bank}",
        f"eval.query_source={queries}", "data.shard_size=100", "curate.near_dedup=false",
        "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "train.num_workers=0", "train.epochs=2", "train.batch_size=64", "train.warmup_epochs=0",
        f"train.knn_monitor_queries={n_queries}", "train.knn_monitor_bank=10000", "train.monitor_pool_samples=0",
        "eval.linear_probe=false", "eval.few_shot_tries=0", "eval.robustness=false", "eval.embedding_plot=false",
    ])
    run_dir = run_pipeline(cfg)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    online = history[-1]["knn_top1"]
    stage = json.loads((run_dir / "stages" / "evaluate.json").read_text())
    full = stage["knn_top1"]["pretrained"]
    assert stage["test_size"] == 500 and stage["bank_size"] == 600
    # sampling noise of a mean over 150 of the 500 queries (finite population); 3 standard errors
    se = math.sqrt(full * (1 - full) / n_queries * (1 - n_queries / 500))
    assert abs(online - full) <= 3 * se + 1e-9, (online, full, 3 * se)
    assert history[-1]["monitor_query_classes"] == 10


# --------------------------------------------------------------------------- the collapse alarm


class _Collapsed(torch.nn.Module):
    """Every image to (almost) the same point: what a collapsed SSL encoder computes."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.ones(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 1e-5 * x.flatten(1)[:, :32]


def _monitor_on(images: torch.Tensor, epochs_every: int = 1) -> OnlineMonitor:
    cfg = load_config(None, ["backbone.width=8", f"train.knn_monitor_every={epochs_every}"])
    monitor = OnlineMonitor(cfg, rank=0, names=())  # no Ray datasets: give it its pool sample directly
    monitor.pool, monitor.has_pool = images, True
    return monitor


def test_a_collapsing_encoder_raises_the_alarm_and_a_healthy_one_does_not(mnist_digits, capsys) -> None:
    from pipelines.models import build_method_from_config

    images = torch.from_numpy(mnist_digits[0][:256]).unsqueeze(1).contiguous()
    monitor = _monitor_on(images)
    healthy = monitor.epoch_metrics(build_method_from_config(monitor.cfg).backbone, epoch=1)
    assert set(healthy) == {"rankme", "alignment", "uniformity", "feature_std"}
    assert healthy["feature_std"] > 1.5 * monitor.cfg.train.collapse_std_threshold and healthy["rankme"] > 3
    assert "warning" not in capsys.readouterr().out
    collapsed = monitor.epoch_metrics(_Collapsed(), epoch=2)
    assert collapsed["feature_std"] < 0.01 and collapsed["rankme"] < 1.5
    out = capsys.readouterr().out
    assert "[monitor] warning: epoch 2: the features are collapsing" in out and "collapse_std_threshold" in out
    # other ranks report the same keys (NaN), and epochs between monitor epochs report nothing
    other = OnlineMonitor(monitor.cfg, rank=1, names=("monitor_pool",))
    assert set(other.epoch_metrics(_Collapsed(), epoch=2)) == set(collapsed)
    assert _monitor_on(images, epochs_every=2).epoch_metrics(_Collapsed(), epoch=1) == {}


def test_tail_accuracy_weighs_each_tail_class_the_same_and_ignores_the_head() -> None:
    from pipelines.monitor import tail_accuracy

    truth = np.array([0] * 90 + [1] * 8 + [2] * 2)
    preds = truth.copy()
    preds[:90] = 1  # the head class is all wrong: it must not count
    preds[98] = 0  # class 2: one of its two queries wrong
    assert tail_accuracy(preds, truth, [1, 2]) == pytest.approx((1.0 + 0.5) / 2)
    assert np.isnan(tail_accuracy(preds, truth, [5]))  # no query of the tail: NaN, not 0 or 1


def test_tail_classes_must_be_distinct_class_ids() -> None:
    from pipelines.config import load_config

    assert load_config(None, ["eval.tail_classes=[7,8,9]"]).eval.tail_classes == [7, 8, 9]
    for bad in ("[7,7]", "[-1]"):
        with pytest.raises(Exception, match="eval.tail_classes"):
            load_config(None, [f"eval.tail_classes={bad}"])


def test_the_last_epoch_is_always_scored_with_the_tail_classes(mnist_digits) -> None:
    """``train.knn_monitor_every=2``: epoch 1 is skipped, but a run that ends at epoch 3 is scored there
    (overall and on ``eval.tail_classes``), so the encoder a run hands over always has its figures."""
    from pipelines.models import build_method_from_config
    from pipelines.monitor import tail_accuracy

    images, labels = mnist_digits
    x = torch.from_numpy(images[:600]).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels[:600].astype(np.int64))
    cfg = load_config(None, ["backbone.width=8", "train.knn_monitor_every=2", "eval.tail_classes=[8,9]",
                             "eval.knn_k=10"])
    monitor = OnlineMonitor(cfg, rank=0, names=())
    monitor.bank, monitor.queries, monitor.has_knn = (x[:400], y[:400]), (x[400:], y[400:]), True
    backbone = build_method_from_config(cfg).backbone
    assert monitor.epoch_metrics(backbone, epoch=1) == {}
    last = monitor.epoch_metrics(backbone, epoch=3, final=True)
    assert set(last) == {"knn_top1", "monitor_query_classes", "knn_tail_top1"} == set(monitor.keys())
    assert 0 <= last["knn_tail_top1"] <= 1 and last["knn_tail_top1"] != tail_accuracy(
        np.zeros(200, np.int64), y[400:].numpy(), [8, 9])  # a real vote, not an all-zero prediction
