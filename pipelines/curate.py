"""The curation job: shards in, curated shards + manifest + summary out.

Pass 1 (Ray Data, parallel per shard): decode, validate and hash every sample;
only metadata travels to the driver. The driver makes the global decisions
(duplicate keys, exact duplicates, near duplicates) in key order, so the result
does not depend on how many nodes read the shards or in what order. Pass 2 (Ray
tasks, one per input shard) writes each shard's kept samples to a curated shard
of the same name; a shard already written is skipped, so a killed job resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import pyarrow as pa
import ray

from curation.exact_dedup import exact_duplicates
from curation.ingest import iter_samples
from curation.image_checks import inspect_batch
from curation.manifest import MANIFEST_SCHEMA, check_conservation, reason_counts, write_table_atomic
from curation.shards import Sample, list_shards, write_tar_stream
from curation.validate import ValidationRules
from curation.decode import Intensity
from pipelines.console import say
from pipelines.atomic import write_json_atomic
from pipelines.config import CurateConfig
from pipelines.readers import map_shards
import storage

log = logging.getLogger("sslpipe.curate")


@dataclass
class CurationResult:
    manifest_path: Path | str  # a uri when the output folder is in object storage
    summary_path: Path | str
    shard_paths: list[str]
    summary: dict[str, Any]


def _collect_metadata(paths: list[str], rules: ValidationRules, shift_robust: int = 0) -> pa.Table:
    ds = map_shards(paths, inspect_batch, {"rules": rules, "shift_robust": shift_robust}, rows_per_batch=256)
    batches = (cast(pa.Table, t) for t in ds.iter_batches(batch_format="pyarrow", batch_size=None))  # pyarrow format: Tables
    tables = [t for t in batches if t.num_rows]
    if not tables:
        raise ValueError(f"the shards hold no samples: {paths[:3]}")
    return pa.concat_tables(tables, promote_options="permissive")


def decide(meta: pa.Table, cfg: CurateConfig) -> pa.Table:
    """Turn per-sample metadata into the manifest: kept, reason, duplicate_of.

    Decisions run in key order, so the first of a duplicate group by key is kept.
    """
    meta = meta.sort_by([("key", "ascending"), ("source", "ascending")])
    keys = [str(k) for k in meta.column("key").to_pylist()]
    reasons = [str(r) for r in meta.column("reason").to_pylist()]
    dup_of = [""] * len(keys)

    seen: set[str] = set()
    for i, k in enumerate(keys):  # a key seen before (another shard) is kept under a unique name
        if k in seen:
            source = str(meta.column("source")[i])
            n = 1
            while f"{k}@{source}#{n}" in seen:
                n += 1
            keys[i] = f"{k}@{source}#{n}"
            reasons[i], dup_of[i] = "duplicate_key", k
        seen.add(keys[i])

    ok = np.array([r == "ok" for r in reasons])
    digests = [str(d) for d in meta.column("pixel_sha256").to_pylist()]
    if cfg.exact_dedup:
        exact = exact_duplicates(keys, digests, ok)
        for dup in np.flatnonzero(exact >= 0):
            reasons[dup], dup_of[dup] = "exact_dup", keys[exact[dup]]
        ok &= exact < 0
    if cfg.near_dedup and ok.sum() > 1:
        from curation.near_dedup import find_near_duplicates

        idx = np.flatnonzero(ok)
        hashes = meta.column("phash").to_numpy()[idx].astype(np.uint64)
        queries = None
        if "phash_shifts" in meta.column_names:
            queries = np.array(meta.column("phash_shifts").to_pylist(), dtype=np.uint64)[idx]
        near = find_near_duplicates(hashes, [keys[i] for i in idx], cfg.near_dedup_max_hamming, query_hashes=queries)
        for local in np.flatnonzero(near >= 0):
            i = idx[local]
            reasons[i], dup_of[i] = "near_dup", keys[idx[near[local]]]

    kept = [r == "ok" for r in reasons]
    columns = {
        "key": keys,
        "source": meta.column("source").to_pylist(),
        "label": meta.column("label").to_pylist(),
        "width": meta.column("width").to_pylist(),
        "height": meta.column("height").to_pylist(),
        "pixel_sha256": digests,
        "phash": meta.column("phash").to_pylist(),
        "kept": kept,
        "reason": reasons,
        "duplicate_of": dup_of,
        "cluster_ids": [[] for _ in keys],
        "meta": [m if isinstance(m, str) else "" for m in meta.column("meta").to_pylist()],
    }
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def _keep_keys(batch: dict[str, np.ndarray], keys: frozenset[str]) -> dict[str, np.ndarray]:
    mask = np.array([str(k) in keys for k in batch["key"]], dtype=bool)
    return {c: v[mask] for c, v in batch.items()}


def _embeddings(paths: list[str], keys: list[str], out_dir: str, cfg: CurateConfig,
                factory: Callable[[], Any], intensity: Intensity = "full_range") -> np.ndarray:
    """Embeddings of ``keys`` (in that order), from ``out_dir/embeddings.npy`` when it matches, else computed
    on a Ray Data actor pool and saved, so re-clustering with other parameters never re-embeds."""
    cache, cache_keys = storage.join(out_dir, "embeddings.npy"), storage.join(out_dir, "embedding_keys.json")
    if storage.is_file(cache) and storage.is_file(cache_keys) and storage.read_json(cache_keys) == keys:
        say(f"[curate] reusing {len(keys)} embeddings from {cache}")
        with storage.local_copy(cache) as local:
            return np.load(local)
    say(f"[curate] embedding {len(keys)} images ({cfg.embedder}, {cfg.embed_actors} actor(s))")
    wanted = frozenset(keys)
    ds = map_shards(paths, _keep_keys, {"keys": wanted}, rows_per_batch=1024)
    # images are embedded as RGB (grayscale replicated), so one embedder serves every data set
    from pipelines.embedding import collect_embeddings, embed_dataset  # torch: only when embedding

    got_keys, emb = collect_embeddings(embed_dataset(ds, factory, cfg.embed_size, 3, cfg.embed_actors, intensity))
    position = {k: i for i, k in enumerate(got_keys)}  # a key repeated in a shard is embedded twice: keep one
    emb = emb[[position[k] for k in keys]]
    with storage.open_output(cache) as f:
        np.save(f, emb)
    storage.write_json(cache_keys, keys)
    return emb


def semantic_stages(manifest: pa.Table, paths: list[str], out_dir: str, cfg: CurateConfig,
                    factory: Callable[[], Any], seed: int, intensity: Intensity = "full_range"
                    ) -> tuple[pa.Table, dict[str, Any]]:
    """SemDeDup, then hierarchical k-means + balanced sampling, on the samples still kept."""
    from curation.balanced import balanced_sample
    from curation.hierarchical import hierarchical_kmeans
    from curation.levels import CURATION_LEVELS
    from curation.metrics import normalized_entropy
    from curation.semdedup import semdedup

    keys = manifest.column("key").to_pylist()
    reasons = manifest.column("reason").to_pylist()
    dup_of = manifest.column("duplicate_of").to_pylist()
    clusters: list[list[int]] = [[] for _ in keys]
    candidates = [i for i, r in enumerate(reasons) if r == "ok"]
    info: dict[str, Any] = {}
    if len(candidates) < 2:
        return manifest, info
    emb = _embeddings(paths, [keys[i] for i in candidates], out_dir, cfg, factory, intensity)
    # centre on the pool mean before cosine: embeddings (random-conv ones especially) share a large
    # common component that makes every pair look alike
    emb = emb - emb.mean(axis=0, keepdims=True)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    survivors = np.arange(len(candidates))
    if cfg.semdedup_clusters > 0:
        k = min(cfg.semdedup_clusters, max(1, len(candidates) // 2))
        dup = semdedup(emb, k, cfg.semdedup_eps, seed, [keys[i] for i in candidates], mode=cfg.semdedup_mode)
        assert isinstance(dup, np.ndarray)  # without return_assignments: the duplicate-of array alone
        for local in np.flatnonzero(dup >= 0):
            i = candidates[local]
            reasons[i], dup_of[i] = "semantic_dup", keys[candidates[dup[local]]]
        survivors = np.flatnonzero(dup < 0)
        info["semdedup"] = {"clusters": k, "eps": cfg.semdedup_eps, "mode": cfg.semdedup_mode,
                            "removed": int((dup >= 0).sum())}
    if cfg.balance_fraction < 1 and len(survivors) >= 4:
        levels = CURATION_LEVELS.levels(len(survivors), cfg.balance_levels)
        hier = hierarchical_kmeans(emb[survivors], levels, resampling_steps=cfg.balance_resampling_steps, seed=seed)
        target = int(round(cfg.balance_fraction * len(survivors)))
        keep = balanced_sample(hier.assignments, target, seed)
        for j, local in enumerate(survivors):
            i = candidates[local]
            clusters[i] = [int(a[j]) for a in hier.assignments]
            if not keep[j]:
                reasons[i] = "pruned_by_balance"
        finest = hier.assignments[0]
        k1 = int(levels[0])
        info["balance"] = {
            "levels": [int(k) for k in levels], "target": target, "kept": int(keep.sum()),
            "cluster_sizes_before": np.bincount(finest, minlength=k1).tolist(),
            "cluster_sizes_after": np.bincount(finest[keep], minlength=k1).tolist(),
            "normalized_entropy_before": normalized_entropy(finest, k1),
            "normalized_entropy_after": normalized_entropy(finest[keep], k1),
        }
    columns = {name: manifest.column(name).to_pylist() for name in manifest.column_names}
    columns.update(reason=reasons, duplicate_of=dup_of, cluster_ids=clusters, kept=[r == "ok" for r in reasons])
    return pa.table(columns, schema=MANIFEST_SCHEMA), info


def class_histograms(manifest: pa.Table) -> dict[str, list[int]] | None:
    """Label histogram of the decodable input vs the kept set (when labels exist)."""
    labels = np.array(manifest.column("label").to_pylist())
    usable = np.array([r not in ("decode_error", "missing_image", "truncated_shard") for r in
                       manifest.column("reason").to_pylist()])
    kept = np.array(manifest.column("kept").to_pylist())
    if not (labels >= 0).any():
        return None
    n = int(labels.max()) + 1
    return {"before": np.bincount(labels[usable & (labels >= 0)], minlength=n).tolist(),
            "after": np.bincount(labels[kept & (labels >= 0)], minlength=n).tolist()}


def label_counts(manifest: pa.Table) -> dict[str, dict[str, int]]:
    """How many input and kept samples carry a label and how many do not: a pool may mix both
    (labels are kept in the manifest and used only for reporting, never to curate)."""
    labelled = np.array(manifest.column("label").to_pylist(), dtype=np.int64) >= 0
    kept = np.array(manifest.column("kept").to_pylist(), dtype=bool)
    return {"input": {"labelled": int(labelled.sum()), "unlabelled": int((~labelled).sum())},
            "kept": {"labelled": int((labelled & kept).sum()), "unlabelled": int((~labelled & kept).sum())}}


def curated_shard_name(source: str) -> str:
    """Curated shards are plain tars whatever the input format: NAME.parquet, NAME.tar.gz and NAME.tgz
    all become NAME.tar (a compressed name on an uncompressed tar would be read through gunzip)."""
    name = Path(source).name
    for suffix in (".tar.gz", ".tgz", ".parquet", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".tar"
    return name + ".tar"


def _write_curated_shard(source: str, out_path: str, kept_keys: list[str], env: dict[str, str] | None = None) -> int:
    """Copy the kept samples of one input shard into ``out_path`` (local or uri; skipped if it exists).

    ``env``: the driver's storage settings (a Ray worker may have started without them)."""
    storage.apply_env(env)
    if storage.is_file(out_path):
        return -1
    wanted = set(kept_keys)
    samples = []
    for row in iter_samples(source):  # tar or parquet input; curated shards are always tars
        if row["key"] in wanted and not row["read_error"]:
            wanted.discard(row["key"])  # a key repeated inside one shard is written once
            meta = json.loads(row["meta"]) if row["meta"] else {}
            samples.append(Sample(row["key"], row["image"], row["ext"] or "png", int(row["label"]), meta))
    with storage.open_output(out_path) as f:  # whole or not at all: an existing shard means "done"
        write_tar_stream(samples, f)
    return len(samples)


def curate(
    shard_location: str | list[str],
    out_dir: str | Path,
    cfg: CurateConfig,
    *,
    embedder_factory: Callable[[], Any] | None = None,
    seed: int = 0,
    intensity: Intensity = "full_range",
) -> CurationResult:
    """Run both passes; returns where the manifest, summary and curated shards are.

    ``out_dir`` is a local folder or an object-store uri. ``embedder_factory`` builds the embedding
    model on each actor (default: the weights-free random conv net); it is used only when SemDeDup
    or balancing is on. ``intensity`` (``data.intensity``) is how 16-bit/float images are scaled
    wherever curation decodes.
    """
    t0 = time.time()
    paths = shard_location if isinstance(shard_location, list) else list_shards(shard_location)
    out_dir = str(out_dir)
    say(f"[curate] pass 1/2: decode, validate and hash {len(paths)} shard(s)")
    manifest, stage_info = _decide_manifest(paths, out_dir, cfg, embedder_factory, seed, intensity)
    manifest_path = write_table_atomic(manifest, storage.join(out_dir, "manifest.parquet"))
    t1 = time.time()

    say(f"[curate] pass 2/2: write kept samples of {len(paths)} shard(s)")
    curated = _write_curated_shards(paths, _kept_keys_by_source(manifest, paths), out_dir)

    counts = reason_counts(manifest)
    kept_n = int(sum(manifest.column("kept").to_pylist()))
    summary = {
        "input": manifest.num_rows,
        "kept": kept_n,
        "removed": manifest.num_rows - kept_n,
        "reasons": counts,
        "shards_in": len(paths),
        "shards_out": len(curated),
        "seconds": {"pass1_inspect_and_decide": round(t1 - t0, 2), "pass2_write": round(time.time() - t1, 2)},
        "labels": label_counts(manifest),
        **stage_info,
        **_class_balance(manifest),
    }
    summary_path = write_json_atomic(summary, storage.join(out_dir, "summary.json"))
    say(f"[curate] kept {kept_n} of {manifest.num_rows}; removed: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "ok"))
    return CurationResult(manifest_path, summary_path, curated, summary)


def _decide_manifest(paths: list[str], out_dir: str, cfg: CurateConfig, embedder_factory: Callable[[], Any] | None,
                     seed: int, intensity: Intensity) -> tuple[pa.Table, dict[str, Any]]:
    """Pass 1: every input sample's fate (kept, or removed with its reason), checked to account for every
    input before anything is written; plus what the embedding stages report, when one is on."""
    rules = ValidationRules(cfg.min_side, cfg.max_aspect, cfg.max_pixels, cfg.min_pixel_std, intensity)
    meta = _collect_metadata(paths, rules, cfg.near_dedup_max_shift if cfg.near_dedup else 0)
    manifest = decide(meta, cfg)
    stage_info: dict[str, Any] = {}
    if cfg.semdedup_clusters > 0 or cfg.balance_fraction < 1:
        from curation.embed import random_conv_embedder  # torch is imported only when an embedding stage is on

        manifest, stage_info = semantic_stages(manifest, paths, out_dir, cfg, embedder_factory or random_conv_embedder,
                                               seed, intensity)
    check_conservation(manifest.column("key").to_pylist(), manifest)
    return manifest, stage_info


def _kept_keys_by_source(manifest: pa.Table, paths: list[str]) -> dict[str, list[str]]:
    """The kept keys of each input shard, in manifest order (every input shard present, empty if none kept)."""
    kept_by_source: dict[str, list[str]] = {p: [] for p in paths}
    for key, source, kept in zip(
        manifest.column("key").to_pylist(), manifest.column("source").to_pylist(), manifest.column("kept").to_pylist()
    ):
        if kept and source in kept_by_source:
            kept_by_source[source].append(key)
    return kept_by_source


def _write_curated_shards(paths: list[str], kept_by_source: dict[str, list[str]], out_dir: str) -> list[str]:
    """Pass 2: one Ray task per input shard that kept a sample writes its curated tar; returns their paths
    in input order (a shard that kept nothing gets no output)."""
    shard_dir = storage.join(out_dir, "shards")
    write_task = ray.remote(num_cpus=1)(_write_curated_shard)
    outputs = [storage.join(shard_dir, curated_shard_name(p)) for p in paths]
    env = storage.storage_env()
    # Ray's overloads of ray.remote(num_cpus=...)(f) resolve this 4-parameter function to a 2-argument RemoteFunction
    refs = [write_task.remote(p, o, kept_by_source[p], env)  # type: ignore[call-arg]
            for p, o in zip(paths, outputs) if kept_by_source[p]]
    ray.get(refs)
    return [o for p, o in zip(paths, outputs) if kept_by_source[p]]


def _class_balance(manifest: pa.Table) -> dict[str, Any]:
    """summary.json's class histogram and normalized class entropy before and after curation (nothing
    without labels): shows whether curation skewed the classes."""
    hist = class_histograms(manifest)
    if not hist:
        return {}
    from curation.metrics import normalized_entropy

    def class_entropy(counts: list[int]) -> float:
        return normalized_entropy(np.repeat(np.arange(len(counts)), counts), len(counts))

    return {"class_histogram": hist,
            "class_entropy": {"before": class_entropy(hist["before"]), "after": class_entropy(hist["after"])}}
