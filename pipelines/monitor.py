"""The online monitor: what the encoder is worth after each epoch, without touching the training feed.

Two kinds of figures, each on a fixed, seeded random sample drawn once before training:

- **kNN top-1** on the labelled evaluation set (``eval.bank_source`` / ``eval.query_source``):
  the bank and the queries are random samples of the *whole* sets, stratified by class.
  The first rows of a dataset are no sample: shards cut from a class folder are class-sorted,
  so "the first 2,000 queries" cover a class or two and a kNN vote among a handful of classes
  scores far above the real figure (issue #31). Sweeps rank trials by this figure, so a skewed
  sample would also pick the wrong trial.
- **Label-free metrics** (``pipelines/evaluation/label_free.py``: RankMe, alignment, uniformity,
  per-dimension std) on a random sample of the curated *pool*. The pool, not the query set:
  the pool sample exists in every run, with or without a labelled set, and it is the
  distribution being learned; a collapse or a rank drop shows there first. Alignment uses two
  views drawn with the training recipe from a generator seeded the same every epoch, so epochs
  are compared on the same views.

The samples are chosen in the driver (by key, so the same set in any read order gives the same
sample) and reach Ray Train as datasets of their own that are not split across workers; rank 0
reads them once into memory (their size is capped by ``train.knn_monitor_bank``,
``train.knn_monitor_queries`` and ``train.monitor_pool_samples``). The training pool in worker
memory is never used, so the feed may stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from curation.decode import Intensity
import torch

from pipelines.config import METHOD_KEYS, PipelineConfig

#: Ray Train dataset names of the monitor's sets (never split across workers)
BANK_DS, QUERIES_DS, POOL_DS = "monitor_bank", "monitor_queries", "monitor_pool"
LABEL_FREE_KEYS = ("rankme", "alignment", "uniformity", "feature_std")
#: seed offsets, so the bank, query and pool samples are independent draws of one run seed
_BANK_SEED, _QUERY_SEED, POOL_SEED_OFFSET, _VIEW_SEED = 101, 202, 303, 404


# --------------------------------------------------------------------------- choosing the samples


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample sizes summing to min(n, total), proportional to ``counts`` (largest
    remainder), with at least one per non-empty class whenever n allows it."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n >= total:
        return counts.copy()
    quota = counts * (n / total)
    alloc = np.floor(quota).astype(np.int64)
    nonempty = counts > 0
    if n >= int(nonempty.sum()):
        alloc = np.where(nonempty, np.maximum(alloc, 1), 0)
    alloc = np.minimum(alloc, counts)
    order = np.lexsort((np.arange(len(counts)), -(quota - alloc)))  # largest remainder first, then class id
    while alloc.sum() < n:
        for i in order:
            if alloc.sum() >= n:
                break
            if alloc[i] < counts[i]:
                alloc[i] += 1
    over = np.lexsort((np.arange(len(counts)), -(alloc - quota)))  # the forced minimum can overshoot n
    while alloc.sum() > n:
        for i in over:
            if alloc.sum() <= n:
                break
            if alloc[i] > 1:
                alloc[i] -= 1
    return alloc


def stratified_sample(keys: Sequence[str] | np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded random sample of ``n`` labelled rows (label >= 0), stratified by class.

    Rows are ranked by key before drawing, so the result depends on the set, not on the order a
    reader yields it in. Unlabelled rows of an evaluation set are never drawn (they cannot vote
    or be scored).
    """
    keys_arr = np.asarray(keys, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    by_key = np.argsort(keys_arr, kind="stable")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[labels >= 0])
    members = [by_key[labels[by_key] == c] for c in classes]
    take = allocate(np.array([len(m) for m in members], dtype=np.int64), n)
    chosen = [m[rng.permutation(len(m))[:k]] for m, k in zip(members, take)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def random_sample(keys: Sequence[str] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded random sample of ``n`` rows, whatever their labels (the pool: labels
    there are for reporting only); independent of read order, like ``stratified_sample``."""
    keys_arr = np.asarray(keys, dtype=object)
    by_key = np.argsort(keys_arr, kind="stable")
    rng = np.random.default_rng(seed)
    return np.sort(by_key[rng.permutation(len(by_key))[: min(n, len(by_key))]])


# --------------------------------------------------------------------------- the datasets


@dataclass
class MonitorSets:
    """The monitor's three samples as Ray Datasets (columns ``key``, ``image`` uint8 HWC, ``label``).

    Each is used whole: build them with ``build_monitor_sets`` (seeded random samples) or pass
    small datasets directly. ``bank`` and ``queries`` go together; ``pool`` alone gives the
    label-free metrics only.
    """

    bank: Any = None
    queries: Any = None
    pool: Any = None

    def datasets(self) -> dict[str, Any]:
        named = {BANK_DS: self.bank, QUERIES_DS: self.queries, POOL_DS: self.pool}
        return {name: ds for name, ds in named.items() if ds is not None}

    def materialize(self) -> "MonitorSets":
        """Decode once into the object store (a sweep shares them between its trials)."""
        return MonitorSets(*(ds.materialize() if ds is not None else None for ds in (self.bank, self.queries, self.pool)))


def _decode_selected(batch: dict[str, np.ndarray], keys: frozenset[str], size: int, channels: int,
                     intensity: Intensity) -> dict[str, np.ndarray]:
    """Ray Data UDF: keep the rows whose key was drawn, decode them like the training feed does."""
    from curation.ingest import decode_batch

    mask = np.array([str(k) in keys for k in batch["key"]], dtype=bool)
    return decode_batch({c: v[mask] for c, v in batch.items()}, size, channels, intensity)


def selected_dataset(paths: list[str], keys: Sequence[str], cfg: PipelineConfig) -> Any:
    """The decoded rows of ``paths`` whose key is in ``keys`` (one Ray task per shard)."""
    from pipelines.readers import map_shards

    d = cfg.data
    return map_shards(paths, _decode_selected, {"keys": frozenset(str(k) for k in keys), "size": d.image_size,
                                                "channels": d.channels, "intensity": d.intensity})


def _shard_name(path: Any) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def build_monitor_sets(cfg: PipelineConfig, *, bank: tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None = None,
                       queries: tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None = None,
                       pool: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> MonitorSets:
    """Seeded random samples of the labelled sets (stratified) and of the pool, as datasets.

    ``bank``/``queries``: (shards, keys, labels, source shard of each key) of the whole set;
    ``pool``: (shards, keys, source shard of each key) of the curated pool. Only the shards that
    hold a drawn key are read.
    """
    tc = cfg.train
    out = MonitorSets()
    if tc.knn_monitor_every == 0:
        return out

    def pick(paths: list[str], keys: np.ndarray, sources: np.ndarray, idx: np.ndarray) -> Any:
        # by shard name: a curated shard keeps the name of the input shard its samples came from
        wanted = {_shard_name(s) for s in sources[idx]}
        return selected_dataset([p for p in paths if _shard_name(p) in wanted] or paths, keys[idx], cfg)

    if bank is not None and queries is not None:
        paths, keys, labels, sources = bank
        out.bank = pick(paths, keys, sources, stratified_sample(keys, labels, tc.knn_monitor_bank, cfg.seed + _BANK_SEED))
        paths, keys, labels, sources = queries
        out.queries = pick(paths, keys, sources,
                           stratified_sample(keys, labels, tc.knn_monitor_queries, cfg.seed + _QUERY_SEED))
    if pool is not None and tc.monitor_pool_samples > 0:
        paths, keys, sources = pool
        out.pool = pick(paths, keys, sources, random_sample(keys, tc.monitor_pool_samples, cfg.seed + POOL_SEED_OFFSET))
    return out


def pool_index(cur_rec: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(curated shards, kept keys, the input shard of each) from a run's curation record: the
    manifest says where every kept sample is, so no shard is read to choose the pool sample."""
    import pyarrow.parquet as pq

    table = pq.read_table(cur_rec["manifest"], columns=["key", "source", "kept"])
    kept = np.array(table.column("kept").to_pylist(), dtype=bool)
    keys = np.array(table.column("key").to_pylist(), dtype=object)[kept]
    sources = np.array(table.column("source").to_pylist(), dtype=object)[kept]
    return list(cur_rec["shards"]), keys, sources


def pool_sample_keys(cfg: PipelineConfig, keys: np.ndarray) -> np.ndarray:
    """The keys of the pool sample the label-free metrics use, every epoch and in the evaluate stage."""
    return keys[random_sample(keys, cfg.train.monitor_pool_samples, cfg.seed + POOL_SEED_OFFSET)]


def monitor_sets_for_run(cfg: PipelineConfig, pool_rec: dict[str, Any], cur_rec: dict[str, Any],
                         labelled: dict[str, Any] | None = None) -> MonitorSets:
    """The monitor's sets of a run: samples of its labelled evaluation set (``index_eval_sets``,
    indexed here when not given) and of its curated pool."""
    from pipelines.eval_sets import index_eval_sets

    if labelled is None:
        labelled = index_eval_sets(cfg, pool_rec)
    return build_monitor_sets(cfg, pool=pool_index(cur_rec), **(labelled or {}))


# --------------------------------------------------------------------------- in the training loop


def tail_accuracy(preds: np.ndarray, truth: np.ndarray, tail_classes: Sequence[int]) -> float:
    """Mean per-class accuracy over the tail classes present among the queries (NaN if none is): each
    rare class counts the same, however few queries it has."""
    present = [c for c in tail_classes if (truth == c).any()]
    if not present:
        return float("nan")
    return float(np.mean([np.mean(preds[truth == c] == c) for c in present]))


def _collect(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of a monitor dataset as (uint8 NCHW images, labels), sorted by key (reproducible)."""
    import ray.train

    keys: list[str] = []
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=1024, batch_format="numpy"):
        n = len(batch["image"])
        if "key" in batch:
            keys.extend(str(k) for k in batch["key"])
        else:  # a dataset without keys (a library caller's): kept in read order
            keys.extend(f"{len(keys) + i:012d}" for i in range(n))
        images.append(np.asarray(batch["image"], dtype=np.uint8))
        labels.append(np.asarray(batch["label"], dtype=np.int64) if "label" in batch else np.full(n, -1, np.int64))
    if not keys:
        return torch.zeros(0, 1, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    order = np.argsort(np.array(keys, dtype=object), kind="stable")  # datasets without keys: read order
    x = torch.from_numpy(np.concatenate(images)[order]).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.concatenate(labels)[order])


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, cfg: PipelineConfig,
             views: torch.Generator | None = None) -> np.ndarray:
    """Backbone features of uint8 NCHW ``images``: the evaluation view (resize + normalise), or,
    with a generator, one augmented view per image drawn with the training recipe."""
    from pipelines.embedding import backbone_features
    from pipelines.models import view_recipe
    from ssl_models.augment import RENDERERS, normalize_batch

    recipe = view_recipe(cfg)
    render = RENDERERS[cfg.augment.renderer]
    if views is not None:
        return backbone_features(backbone, images, lambda x: render(x, recipe, views)).numpy()
    return backbone_features(backbone, images, lambda x: normalize_batch(x, recipe)).numpy()


@torch.no_grad()
def label_free_on_images(backbone: torch.nn.Module, images: torch.Tensor, cfg: PipelineConfig) -> dict[str, float]:
    """RankMe, uniformity and feature std on the evaluation view of ``images``; alignment on two
    augmented views from a generator seeded the same on every call, so every epoch (and the
    evaluate stage) scores the same view pairs. Backbone features: what kNN, the probes and an
    export use, and the one output every method has (MAE has no projector)."""
    from pipelines.evaluation.label_free import label_free_metrics

    was_training = backbone.training
    backbone.eval()
    try:
        plain = features(backbone, images, cfg)
        gen = torch.Generator().manual_seed(cfg.seed + _VIEW_SEED)
        view_a = features(backbone, images, cfg, gen)
        view_b = features(backbone, images, cfg, gen)
    finally:
        backbone.train(was_training)
    return label_free_metrics(plain, view_a, view_b)


class OnlineMonitor:
    """Built once per worker in ``train_loop``; ``epoch_metrics`` after every epoch.

    Every rank returns the same keys (Ray Train wants the same metrics from each); only rank 0
    holds data and computes, the others report NaN.
    """

    def __init__(self, cfg: PipelineConfig, rank: int, names: Sequence[str]) -> None:
        self.cfg, self.rank = cfg, rank
        self.every = cfg.train.knn_monitor_every
        self.has_knn = BANK_DS in names and QUERIES_DS in names and self.every > 0
        self.has_pool = POOL_DS in names and self.every > 0
        self.bank = self.queries = self.pool = None
        if rank == 0 and self.has_knn:
            self.bank, self.queries = _collect(BANK_DS), _collect(QUERIES_DS)
            self.has_knn = len(self.bank[1]) > 0 and len(self.queries[1]) > 0
        if rank == 0 and self.has_pool:
            self.pool = _collect(POOL_DS)[0]
            self.has_pool = len(self.pool) >= 2

    @classmethod
    def start(cls, cfg: PipelineConfig, rank: int, loop_config: dict[str, Any]) -> "OnlineMonitor":
        """From the train loop's config: ``monitor_sets`` names the datasets the driver attached
        (told, not probed: Ray's in-process mode asserts on a missing dataset shard)."""
        return cls(cfg, rank, loop_config.get("monitor_sets") or ())

    def keys(self) -> list[str]:
        out = ["knn_top1", "monitor_query_classes"] if self.has_knn else []
        if self.has_knn and self.cfg.eval.tail_classes:
            out.append("knn_tail_top1")
        return out + (list(LABEL_FREE_KEYS) if self.has_pool else [])

    def epoch_metrics(self, backbone: torch.nn.Module, epoch: int, final: bool = False) -> dict[str, float]:
        """The monitor's figures for this epoch ({} on epochs it skips). The run's last epoch is always
        scored, so a run (or a sweep trial) ends with the figures of the encoder it hands over."""
        if not self.every or (epoch % self.every and not final):
            return {}
        if self.rank != 0:
            return {k: float("nan") for k in self.keys()}
        was_training = backbone.training
        backbone.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # eval mode, odd batch sizes: no recompile
                if self.has_knn:
                    out.update(self._knn(backbone))
                if self.has_pool:
                    out.update(self._label_free(backbone, epoch))
        finally:
            backbone.train(was_training)
        return out

    def describe(self, metrics: dict[str, Any]) -> str:
        """The monitor's part of the epoch line."""
        parts = []
        if "knn_top1" in metrics:
            parts.append(f"knn {metrics['knn_top1']:.3f}")
        if "rankme" in metrics:
            parts.append(f"rankme {metrics['rankme']:.1f}  std {metrics['feature_std']:.3f}")
        return "".join("  " + p for p in parts)

    # ------------------------------------------------------------------ figures

    def _knn(self, backbone: torch.nn.Module) -> dict[str, float]:
        from pipelines.evaluation.knn import weighted_knn_predict

        ev = self.cfg.eval
        bank, queries = self.bank, self.queries
        assert bank is not None and queries is not None, "called only when has_knn"
        truth = queries[1].numpy()
        num_classes = int(max(bank[1].max(), truth.max())) + 1
        preds = weighted_knn_predict(features(backbone, bank[0], self.cfg), bank[1].numpy(),
                                     features(backbone, queries[0], self.cfg), ev.knn_k, ev.knn_temperature,
                                     num_classes=num_classes)
        out = {"knn_top1": float(np.mean(preds == truth)), "monitor_query_classes": int(np.unique(truth).size)}
        if ev.tail_classes:
            out["knn_tail_top1"] = tail_accuracy(preds, truth, ev.tail_classes)
        return out

    def _label_free(self, backbone: torch.nn.Module, epoch: int) -> dict[str, float]:
        from pipelines.console import say

        assert self.pool is not None, "called only when has_pool"
        metrics = label_free_on_images(backbone, self.pool, self.cfg)
        threshold = self.cfg.train.collapse_std_threshold
        if math.isfinite(metrics["feature_std"]) and metrics["feature_std"] < threshold:
            # only a key the method takes: any other is refused at config load
            raise_t = "raise method.temperature, " if "temperature" in METHOD_KEYS.get(self.cfg.method.name, ()) else ""
            say(f"[monitor] warning: epoch {epoch}: the features are collapsing: per-dimension std "
                f"{metrics['feature_std']:.4f} < train.collapse_std_threshold {threshold} (1 = spread over the "
                f"sphere, 0 = every image on one point; RankMe {metrics['rankme']:.1f}); lower train.lr, {raise_t}"
                f"or check the method's predictor / momentum encoder")
        return metrics
