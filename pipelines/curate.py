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
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from curation.exact_dedup import exact_duplicates
from curation.ingest import open_input, read_shards
from curation.inspect import inspect_batch
from curation.manifest import MANIFEST_SCHEMA, check_conservation, reason_counts, write_table_atomic
from curation.shards import Sample, iter_tar_samples, list_shards, write_shard
from curation.validate import ValidationRules
from pipelines.atomic import write_json_atomic
from pipelines.config import CurateConfig

log = logging.getLogger("sslpipe.curate")


@dataclass
class CurationResult:
    manifest_path: Path
    summary_path: Path
    shard_paths: list[str]
    summary: dict[str, Any]


def _collect_metadata(paths: list[str], rules: ValidationRules) -> pa.Table:
    ds = read_shards(paths).map_batches(inspect_batch, batch_size=256, fn_kwargs={"rules": rules})
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
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
        for i in np.flatnonzero(exact >= 0):
            reasons[i], dup_of[i] = "exact_dup", keys[exact[i]]
        ok &= exact < 0
    if cfg.near_dedup and ok.sum() > 1:
        from curation.near_dedup import find_near_duplicates

        idx = np.flatnonzero(ok)
        hashes = meta.column("phash").to_numpy()[idx].astype(np.uint64)
        near = find_near_duplicates(hashes, [keys[i] for i in idx], cfg.near_dedup_max_hamming)
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
        "meta": [m if isinstance(m, str) else "" for m in meta.column("meta").to_pylist()],
    }
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def _write_curated_shard(source: str, out_path: str, kept_keys: list[str]) -> int:
    """Copy the kept samples of one input shard into ``out_path`` (skipped if it exists)."""
    out = Path(out_path)
    if out.exists():
        return -1
    wanted = set(kept_keys)
    samples = []
    with open_input(source) as f:
        for row in iter_tar_samples(f, source):
            if row["key"] in wanted and not row["read_error"]:
                wanted.discard(row["key"])  # a key repeated inside one shard is written once
                meta = json.loads(row["meta"]) if row["meta"] else {}
                samples.append(Sample(row["key"], row["image"], row["ext"], int(row["label"]), meta))
    write_shard(samples, out)
    return len(samples)


def curate(shard_location: str | list[str], out_dir: str | Path, cfg: CurateConfig) -> CurationResult:
    """Run both passes; returns where the manifest, summary and curated shards are."""
    t0 = time.time()
    paths = shard_location if isinstance(shard_location, list) else list_shards(shard_location)
    out_dir = Path(out_dir)
    rules = ValidationRules(cfg.min_side, cfg.max_aspect, cfg.max_pixels, cfg.min_pixel_std)
    print(f"[curate] pass 1/2: decode, validate and hash {len(paths)} shard(s)", flush=True)
    meta = _collect_metadata(paths, rules)
    manifest = decide(meta, cfg)
    check_conservation(manifest.column("key").to_pylist(), manifest)
    manifest_path = write_table_atomic(manifest, out_dir / "manifest.parquet")
    t1 = time.time()

    print(f"[curate] pass 2/2: write kept samples of {len(paths)} shard(s)", flush=True)
    kept_by_source: dict[str, list[str]] = {p: [] for p in paths}
    for key, source, kept in zip(
        manifest.column("key").to_pylist(), manifest.column("source").to_pylist(), manifest.column("kept").to_pylist()
    ):
        if kept and source in kept_by_source:
            kept_by_source[source].append(key)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_task = ray.remote(num_cpus=1)(_write_curated_shard)
    outputs = [str(shard_dir / Path(p).name) for p in paths]
    refs = [write_task.remote(p, o, kept_by_source[p]) for p, o in zip(paths, outputs) if kept_by_source[p]]
    ray.get(refs)
    curated = [o for p, o in zip(paths, outputs) if kept_by_source[p]]

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
    }
    summary_path = write_json_atomic(summary, out_dir / "summary.json")
    print(f"[curate] kept {kept_n} of {manifest.num_rows}; removed: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "ok"), flush=True)
    return CurationResult(manifest_path, summary_path, curated, summary)
