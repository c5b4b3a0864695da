"""Dynamic dataset pruning during pretraining (the Earth-observation paper behind OceanSAR/Nereus; SCAN).

After a warm-up on the full pool, every few epochs the *current* model re-embeds the pool,
and training continues on a subset until the next round:

- ``cluster_balance``: hierarchical k-means on a random subset of the embeddings, every
  sample assigned to its nearest finest-level centroid, then balanced sampling (Vo et al.)
  keeps ``keep_fraction``: over-represented modes are thinned, rare ones kept whole.
- ``loss_based`` (SCAN-style): samples whose two augmented views the model already maps
  close together (the alignment part of the SSL loss) are easy; the easiest are pruned.
- ``random``: a fresh random ``keep_fraction`` every round, no embedding. The control for the
  two above: the same subset size and the same number of rounds, without a selection rule, so a
  comparison says what the rule itself is worth (bench/pruning_grid.py).

Two implementations, one per feed (``data.cache``):

- memory (``select_subset``): each Ray Train worker prunes its own in-memory shard. Shards
  are disjoint random splits of equal size, so every worker keeps the same number of samples
  and DDP stays in step, no images cross the network, and re-embedding costs one forward pass
  over the local shard.
- stream (``stream_round``): no worker holds the pool. A round is a Ray Data job over the
  whole pool: read tasks decode every kept image at the evaluation view, an actor pool
  (``dynamic.embed_actors``) embeds it with the current weights, rank 0 clusters and selects,
  and the result is a keep-list of sample keys in the run directory; the following epochs'
  stream reads only those samples (``pipelines.feed.StreamFeed.set_keep``). For
  ``cluster_balance`` on a pool larger than ``subset_for_clustering``, the first pass embeds
  only the subset the k-means is fitted on, and a second pass assigns every sample to its
  centroid inside the actors, so rank 0 never holds more than the subset's embeddings.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import storage
from curation.balanced import balanced_sample
from curation.hierarchical import hierarchical_kmeans
from curation.kmeans import assign
from curation.levels import PRUNING_LEVELS
from curation.metrics import normalized_entropy
from curation.decode import Intensity
from pipelines.embedding import backbone_features
from ssl_models.augment import ViewRecipe, augment_batch, normalize_batch

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.feed_plan import ShardPool


@dataclass
class PruningRound:
    indices: torch.Tensor  # local indices of the samples to train on until the next round
    info: dict[str, Any]


def _features(backbone: torch.nn.Module, images: torch.Tensor, recipe: ViewRecipe, views: bool = False,
              gen: torch.Generator | None = None) -> torch.Tensor:
    """Unit-norm features of the local pool: the evaluation view, or one augmented view per image from ``gen``."""
    if views:
        return backbone_features(backbone, images, lambda x: augment_batch(x, recipe, gen), unit_norm=True)
    return backbone_features(backbone, images, lambda x: normalize_batch(x, recipe), unit_norm=True)


def select_subset(
    policy: str,
    backbone: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: ViewRecipe,
    *,
    keep_fraction: float,
    subset_for_clustering: int,
    levels: list[int],
    resampling_steps: int,
    seed: int,
) -> PruningRound:
    """One pruning round on a worker's local pool (uint8 NCHW ``images``)."""
    t0 = time.time()
    was_training = backbone.training
    backbone.eval()
    n = len(images)
    target = max(1, int(round(keep_fraction * n)))
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"policy": policy, "pool": n, "kept": target}
    if policy == "cluster_balance":
        feats = _features(backbone, images, recipe).numpy()
        t_embed = time.time() - t0
        feats = feats - feats.mean(0, keepdims=True)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        fit = rng.choice(n, size=min(n, subset_for_clustering), replace=False)
        ks = PRUNING_LEVELS.levels(len(fit), levels)
        hier = hierarchical_kmeans(feats[fit], ks, resampling_steps=resampling_steps, seed=seed)
        finest, _ = assign(feats, hier.centroids[0], spherical=True)
        assignments = [finest]
        for parent in hier.parents:  # carry every point up the tree through its cluster's parent
            assignments.append(parent[assignments[-1]])
        keep = balanced_sample(assignments, target, seed)
        chosen = np.flatnonzero(keep)
        info.update(levels=ks, cluster_entropy_before=normalized_entropy(finest, ks[0]),
                    cluster_entropy_after=normalized_entropy(finest[keep], ks[0]))
    elif policy == "random":
        chosen = np.sort(rng.choice(n, size=target, replace=False))
        t_embed = 0.0
    elif policy == "loss_based":
        gen = torch.Generator().manual_seed(seed)
        a = _features(backbone, images, recipe, views=True, gen=gen)
        b = _features(backbone, images, recipe, views=True, gen=gen)
        t_embed = time.time() - t0
        alignment = (a * b).sum(1)  # high = the model already finds this sample easy
        chosen = torch.argsort(alignment)[:target].sort().values.numpy()
        info["mean_alignment_kept"] = float(alignment[chosen].mean())
        info["mean_alignment_pruned"] = float(alignment[np.setdiff1d(np.arange(n), chosen)].mean()) if target < n else 0.0
    else:
        raise ValueError(f"unknown pruning policy {policy!r}; choose cluster_balance, loss_based or random")
    lab = labels.numpy()
    if (lab >= 0).any():
        k = int(lab.max()) + 1
        info["class_entropy_before"] = normalized_entropy(lab[lab >= 0], k)
        kept_lab = lab[chosen]
        info["class_entropy_after"] = normalized_entropy(kept_lab[kept_lab >= 0], k)
    info["embed_seconds"] = t_embed
    info["round_seconds"] = time.time() - t0
    backbone.train(was_training)
    return PruningRound(torch.from_numpy(np.asarray(chosen, dtype=np.int64)), info)


# --------------------------------------------------------------------------- stream mode: a round as a Ray Data job


@dataclass
class StreamRound:
    keep: dict[int, list[str]]  # shard index -> keys of the samples the next epochs train on
    info: dict[str, Any]
    path: str | None  # the keep-list, relative to the run directory


def _in_subset(key: str, salt: int, fraction: float) -> bool:
    """A seeded, order-free random subset of keys (the k-means fitting sample)."""
    return (zlib.crc32(key.encode(), salt) & 0xFFFFFFFF) < fraction * 2**32


def round_rows(batch: dict[str, np.ndarray], size: int, channels: int, shard_index: dict[str, int],
               subset: tuple[int, float] | None = None, max_pixels: int = 50_000_000,
               intensity: Intensity = "full_range") -> dict[str, np.ndarray]:
    """Ray Data UDF (read tasks): a shard's rows -> key, shard, label and the evaluation view."""
    from curation.decode import decode_to_array

    keys, shards, labels, images = [], [], [], []
    for key, data, label, source, error in zip(batch["key"], batch["image"], batch["label"], batch["source"],
                                               batch["read_error"]):
        if error or data is None or (subset is not None and not _in_subset(str(key), *subset)):
            continue
        try:
            images.append(decode_to_array(data, size, channels, max_pixels, intensity))
        except Exception:  # noqa: BLE001 - a sample that no longer decodes is left out of the round
            continue
        keys.append(str(key))
        shards.append(shard_index[str(source)])
        labels.append(int(label))
    return {"key": np.array(keys, dtype=object), "shard": np.array(shards, np.int64),
            "label": np.array(labels, np.int64),
            "image": np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)}


class RoundEmbedder:
    """Ray Data actor: the current backbone (weights from the object store) over evaluation views.

    ``mode``: ``embed`` (unit-norm features), ``assign`` (nearest finest centroid of the centred,
    renormalised features) or ``align`` (cosine between two augmented views: loss_based).
    """

    def __init__(self, config: dict[str, Any], weights: list, mode: str, centroids: np.ndarray | None = None,
                 mean: np.ndarray | None = None, seed: int = 0, use_gpu: bool = False) -> None:
        import ray

        from pipelines.config import config_from_dict
        from pipelines.models import build_method_from_config, view_recipe

        torch.set_num_threads(1)
        cfg = config_from_dict(config)
        self.device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.backbone = build_method_from_config(cfg).backbone
        self.backbone.load_state_dict(ray.get(weights[0]))
        self.backbone.to(self.device).eval()
        self.recipe = view_recipe(cfg)
        self.mode, self.seed = mode, seed
        self.centroids = torch.from_numpy(centroids).float() if centroids is not None else None
        self.mean = torch.from_numpy(mean).float() if mean is not None else None

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).to(self.device)
        out = {"key": batch["key"], "shard": batch["shard"], "label": batch["label"]}
        if self.mode == "align":
            salt = zlib.crc32("".join(str(k) for k in batch["key"]).encode())
            gen = torch.Generator().manual_seed(self.seed * 1000003 + salt)
            a = torch.nn.functional.normalize(self.backbone(augment_batch(x, self.recipe, gen)).float(), dim=1)
            b = torch.nn.functional.normalize(self.backbone(augment_batch(x, self.recipe, gen)).float(), dim=1)
            out["alignment"] = (a * b).sum(1).cpu().numpy()
            return out
        z = torch.nn.functional.normalize(self.backbone(normalize_batch(x, self.recipe)).float(), dim=1).cpu()
        if self.mode == "embed":
            out["embedding"] = z.numpy()
            return out
        assert self.mean is not None and self.centroids is not None, "mode 'assign' is built with the centroids and mean"
        z = torch.nn.functional.normalize(z - self.mean, dim=1)
        out["cluster"] = (z @ self.centroids.T).argmax(1).numpy().astype(np.int64)
        return out


def _run_round_job(cfg: "PipelineConfig", pool: "ShardPool", weights: Any, mode: str, *, subset: tuple[int, float] | None = None,
                   centroids: np.ndarray | None = None, mean: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One pass of a round over the pool (or its subset): read + decode tasks, then the embedding actors
    (mode ``keys``: no actors, only key, shard and label come back). Rows come back sorted by (shard, key),
    so the round does not depend on which task finished first."""
    from ray.data import ActorPoolStrategy

    from pipelines.readers import map_shards
    from pipelines.config import config_to_dict

    dyn = cfg.dynamic
    shard_index = {uri: i for i, uri in enumerate(pool.shards)}
    ds = map_shards(list(pool.shards), round_rows, {"size": cfg.data.image_size, "channels": cfg.data.channels,
                                                     "shard_index": shard_index, "subset": subset,
                                                     "max_pixels": cfg.curate.max_pixels,
                                                     "intensity": cfg.data.intensity})
    if mode == "keys":
        ds = ds.drop_columns(["image"])
    else:
        ds = ds.map_batches(RoundEmbedder, batch_size=256, compute=ActorPoolStrategy(size=dyn.embed_actors),
                            num_cpus=1, num_gpus=dyn.embed_num_gpus or None,
                            fn_constructor_kwargs={"config": config_to_dict(cfg), "weights": [weights], "mode": mode,
                                                   "centroids": centroids, "mean": mean, "seed": seed,
                                                   "use_gpu": dyn.embed_num_gpus > 0})
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(np.asarray(values))
    if not parts:
        raise RuntimeError("the pruning round read no sample of the pool: are its shards gone?")
    rows = {name: np.concatenate(v) for name, v in parts.items()}
    order = np.lexsort((rows["key"].astype(str), rows["shard"]))
    return {name: v[order] for name, v in rows.items()}


def stream_round(cfg: "PipelineConfig", backbone: torch.nn.Module, pool: "ShardPool", *, epoch: int,
                 run_dir: str | None) -> StreamRound:
    """A pruning round over the whole pool as Ray Data jobs (rank 0 runs it; see the module docstring).

    The keep-list is exactly ``round(keep_fraction x samples read)`` keys, written to
    ``run_dir/keep_lists/epoch_NNNNNN.parquet`` (the epoch, 1-based, it is first used for); ``run_dir`` is a
    local folder or a uri.
    """
    import ray

    from pipelines.feed_plan import shard_keep_list

    dyn = cfg.dynamic
    t0 = time.time()
    seed = cfg.seed * 7919 + epoch * 31
    was_training = backbone.training
    weights = ray.put({k: v.detach().cpu() for k, v in backbone.state_dict().items()})
    n_pool = pool.total
    info: dict[str, Any] = {"policy": dyn.policy}
    if dyn.policy == "cluster_balance":
        rows, chosen, t_embed = _cluster_balance_choice(cfg, pool, weights, seed, t0, info)
    elif dyn.policy == "loss_based":
        rows, chosen, t_embed = _loss_based_choice(cfg, pool, weights, seed, t0, info)
    elif dyn.policy == "random":
        rows = _run_round_job(cfg, pool, weights, "keys")
        t_embed = 0.0
        n = len(rows["key"])
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max(1, int(round(dyn.keep_fraction * n))),
                                                            replace=False))
    else:
        raise ValueError(f"unknown pruning policy {dyn.policy!r}; choose cluster_balance, loss_based or random")
    n = len(rows["key"])
    info.update(pool=n, kept=int(len(chosen)), unread=n_pool - n)
    _class_entropies(rows["label"], chosen, info)
    keys, shards = rows["key"][chosen], rows["shard"][chosen]
    path = _write_keep_list(run_dir, epoch, pool, keys, shards) if run_dir is not None else None
    info["embed_seconds"] = t_embed
    info["round_seconds"] = time.time() - t0
    backbone.train(was_training)
    return StreamRound(shard_keep_list(pool, keys, shards), info, path)


def _cluster_balance_choice(cfg: "PipelineConfig", pool: "ShardPool", weights: Any, seed: int, t0: float,
                            info: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """cluster_balance: (rows read, positions kept, seconds to embed) - k-means on the embeddings, then an
    equal share per cluster at every level, so no dense region of the pool crowds out the rest.

    Clusters are fitted on a subset where the pool is larger than ``dynamic.subset_for_clustering``;
    every sample is then assigned in the actors, so only ids and cluster numbers come back."""
    dyn = cfg.dynamic
    fraction = min(1.0, dyn.subset_for_clustering / max(1, pool.total))
    subset = None if fraction >= 1.0 else (seed & 0xFFFFFFFF, fraction)
    fit = _run_round_job(cfg, pool, weights, "embed", subset=subset)
    feats = fit["embedding"].astype(np.float32)
    mean = feats.mean(0, keepdims=True)
    feats = feats - mean
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    ks = PRUNING_LEVELS.levels(len(feats), dyn.levels)
    hier = hierarchical_kmeans(feats, ks, resampling_steps=dyn.resampling_steps, seed=seed)
    if subset is None:
        rows = fit
        finest, _ = assign(feats, hier.centroids[0], spherical=True)
    else:  # every sample to its centroid inside the actors: only ids and cluster numbers come back
        rows = _run_round_job(cfg, pool, weights, "assign", centroids=hier.centroids[0], mean=mean[0], seed=seed)
        finest = rows["cluster"]
    t_embed = time.time() - t0
    target = max(1, int(round(dyn.keep_fraction * len(rows["key"]))))
    assignments = [finest]
    for parent in hier.parents:  # carry every point up the tree through its cluster's parent
        assignments.append(parent[assignments[-1]])
    chosen = np.flatnonzero(balanced_sample(assignments, target, seed))
    info.update(levels=ks, cluster_entropy_before=normalized_entropy(finest, ks[0]),
                cluster_entropy_after=normalized_entropy(finest[chosen], ks[0]))
    return rows, chosen, t_embed


def _loss_based_choice(cfg: "PipelineConfig", pool: "ShardPool", weights: Any, seed: int, t0: float,
                       info: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """loss_based: (rows read, positions kept, seconds to embed) - keep the samples whose two views
    agree least (the ones the model still has to learn from), in pool order."""
    rows = _run_round_job(cfg, pool, weights, "align", seed=seed)
    t_embed = time.time() - t0
    n = len(rows["key"])
    target = max(1, int(round(cfg.dynamic.keep_fraction * n)))
    alignment = rows["alignment"]
    chosen = np.sort(np.argsort(alignment, kind="stable")[:target])
    info["mean_alignment_kept"] = float(alignment[chosen].mean())
    info["mean_alignment_pruned"] = float(np.delete(alignment, chosen).mean()) if target < n else 0.0
    return rows, chosen, t_embed


def _class_entropies(lab: np.ndarray, chosen: np.ndarray, info: dict[str, Any]) -> None:
    """Class balance before and after the round, where the pool has labels (they never steer the choice:
    they only show what pruning did to the classes)."""
    if (lab >= 0).any():
        k = int(lab.max()) + 1
        info["class_entropy_before"] = normalized_entropy(lab[lab >= 0], k)
        kept_lab = lab[chosen]
        info["class_entropy_after"] = normalized_entropy(kept_lab[kept_lab >= 0], k)


def _write_keep_list(run_dir: str, epoch: int, pool: "ShardPool", keys: np.ndarray, shards: np.ndarray) -> str:
    """Write the keep-list to ``run_dir/keep_lists/epoch_NNNNNN.parquet`` (atomically, so a resume finds it
    whole or not at all); returns its path relative to the run directory."""
    import pyarrow as pa

    from curation.manifest import write_table_atomic

    path = f"keep_lists/epoch_{epoch + 1:06d}.parquet"
    write_table_atomic(pa.table({"key": pa.array([str(k) for k in keys], pa.string()),
                                 "shard": pa.array(shards, pa.int64()),
                                 "shard_uri": pa.array([pool.shards[i] for i in shards], pa.string())}),
                       storage.join(run_dir, path))
    return path


def load_keep_list(pool: "ShardPool", path: str) -> dict[int, list[str]]:
    """A keep-list written by ``stream_round`` (a resumed run keeps training on it); ``path`` may be a uri."""
    import pyarrow.parquet as pq

    from pipelines.feed_plan import shard_keep_list

    fs, local = storage.filesystem_for(path)
    table = pq.read_table(local, columns=["key", "shard"], filesystem=fs)
    return shard_keep_list(pool, table.column("key").to_pylist(), table.column("shard").to_pylist())
