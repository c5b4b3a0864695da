"""The plan of ``sslpipe shard``: every sample the output will hold, sorted by key, with its label.

Listing (``pipelines.shard_listing``) runs in parallel and its parts arrive in any order;
the plan is made from them here, in the driver, as one arrow table sorted by (key, input
rank, origin, offset). So the output shards depend on the input and the options only,
never on how many workers listed or will write them. Copies of a key are rejected
(``duplicate_key``) after the first in input order, as a tar member would otherwise be
read back under another sample.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import InputError
from curation.ingest import expand_shard_inputs, storage_env
from curation.shards import IMAGE_EXTENSIONS
from pipelines.shard_labels import LabelTable, apply_label_file, is_label_file, read_label_file
from pipelines.shard_listing import (PLAN_SCHEMA, ListingPart, file_rows, scan_shards_task, source_kind, split_folder,
                                     walk_folders_task)
from pipelines.shard_tasks import TaskRunner

#: the driver lists an image folder a level at a time (at most three) until it has this many
#: sub-folders to hand out, so a tree with few top folders (years) still spreads over the tasks
MIN_SUBTREES = 64
#: listing tasks per worker that can run at once: evens out subtrees of unequal size
TASKS_PER_WORKER = 4


@dataclass
class SourcePlan:
    """What the shards will hold, and everything that will not be in them."""

    table: pa.Table  # PLAN_SCHEMA rows, sorted by key, unique keys, after --limit
    rejects: list[dict[str, Any]]  # inputs that cannot become samples (scan errors, duplicate keys)
    ignored: list[tuple[str, str]]  # files not read, with the reason
    kind: str  # "folder" or "shards"
    label_source: str  # "folder", "none", "shards", or "file:<path>"
    classes: list[str] = field(default_factory=list)
    label_stats: dict[str, int] = field(default_factory=dict)
    listing_tasks: int = 0


def _chunks(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in at most ``parts`` contiguous, near-equal chunks (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return [c for c in out if c]


def _webdataset_key(key: str, meta: str) -> tuple[str, str]:
    """A key a tar can carry: webdataset keys end at the first dot of the member's basename, so
    ``IMG_1.final`` would be read back as ``IMG_1`` with extension ``final.jpg`` (no image).
    Dots in the last path part become ``_``; the original key is kept in the metadata."""
    head, _, base = key.rpartition("/")
    if "." not in base:
        return key, meta
    parsed = json.loads(meta) if meta else {}
    parsed = parsed if isinstance(parsed, dict) else {"meta": parsed}
    parsed.setdefault("source_key", key)
    return (head + "/" if head else "") + base.replace(".", "_"), json.dumps(parsed, sort_keys=True)


def _apply_webdataset_keys(table: pa.Table) -> pa.Table:
    dotted = pc.match_substring_regex(table.column("key"), r"\.[^/]*$")
    if not pc.any(dotted).as_py():
        return table
    keys, metas = table.column("key").to_pylist(), table.column("meta").to_pylist()
    for i in np.flatnonzero(dotted.to_numpy(zero_copy_only=False)):
        keys[i], metas[i] = _webdataset_key(keys[i], metas[i])
    table = table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    return table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))


def _sort_and_dedupe(table: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
    table = table.sort_by([("key", "ascending"), ("rank", "ascending"), ("origin", "ascending"),
                           ("offset", "ascending")])
    n = table.num_rows
    if n < 2:
        return table, []
    keys = table.column("key").combine_chunks()
    same = pc.equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    duplicate = np.concatenate([[False], same])
    if not duplicate.any():
        return table, []
    origins = table.column("origin")
    rejects = []
    for i in np.flatnonzero(duplicate):
        first = int(i) - 1
        while duplicate[first]:
            first -= 1
        rejects.append({"key": keys[int(i)].as_py(), "source": origins[int(i)].as_py(), "shard": "",
                        "reason": "duplicate_key", "detail": f"first seen in {origins[first].as_py()}"})
    return table.filter(pa.array(~duplicate)), rejects


def _list_folder(src: str, use_folder_labels: bool, runner: TaskRunner) -> tuple[list[ListingPart], list[str], int]:
    split = split_folder(src, MIN_SUBTREES)
    class_index = {c: i for i, c in enumerate(split.classes)} if use_folder_labels else None
    if not split.top_files and not split.subtrees:
        _no_images(src, split.ignored)
    parts = [ListingPart(file_rows(split.root, split.top_files, class_index), [], split.ignored)]
    groups = _chunks(split.subtrees, TASKS_PER_WORKER * runner.parallelism()) if split.subtrees else []
    env = storage_env()
    parts += runner.map(walk_folders_task, [(split.root, group, class_index, env) for group in groups])
    return parts, split.classes if use_folder_labels else [], len(groups)


def _no_images(src: str, ignored: list[tuple[str, str]]) -> None:
    seen = f"; {len(ignored)} other file(s) passed over, e.g. {ignored[0][0]} ({ignored[0][1]})" if ignored else ""
    raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) anywhere below {src}{seen}; point sslpipe shard at "
                     "the folder that holds the images (any depth), or at .tar/.parquet shards")


def _list_shards(src: str, runner: TaskRunner) -> tuple[list[ListingPart], int]:
    uris, ignored = expand_shard_inputs(src)
    groups = _chunks(uris, TASKS_PER_WORKER * runner.parallelism())
    firsts = np.cumsum([0] + [len(g) for g in groups])[:-1]
    env = storage_env()
    parts = runner.map(scan_shards_task, [(group, int(first), env) for group, first in zip(groups, firsts)])
    return [ListingPart(PLAN_SCHEMA.empty_table(), [], ignored)] + parts, len(groups)


def plan_source(src: str, labels: str, limit: int, fmt: str, runner: TaskRunner) -> SourcePlan:
    """List ``src``, label it, and make the sorted, de-duplicated plan (see the module docstring).

    Raises InputError before any shard is written for: a path that does not exist, a folder
    with no image anywhere below it, ``--labels folder`` on shards, an unreadable label file,
    a label file none of whose keys names a listed sample.
    """
    kind = source_kind(src)
    if kind == "shards" and labels == "folder":
        raise InputError(f"--labels folder takes labels from folder names, but {src} is shards; their own labels are "
                         "kept with --labels none, or give a key,label file")
    label_file: LabelTable | None = read_label_file(labels) if is_label_file(labels) else None
    if kind == "folder":
        parts, classes, tasks = _list_folder(src, labels in ("folder", "auto"), runner)
        label_source = "folder" if classes else "none"
    else:
        parts, tasks = _list_shards(src, runner)
        classes, label_source = [], "shards"
    table = pa.concat_tables([p.table for p in parts]) if parts else PLAN_SCHEMA.empty_table()
    rejects = [r for p in parts for r in p.rejects]
    ignored = sorted({item for p in parts for item in p.ignored})
    if kind == "folder" and table.num_rows == 0:
        _no_images(src, ignored)
    label_stats: dict[str, int] = {}
    if label_file is not None:
        table, label_stats = apply_label_file(table, label_file, src)
        classes, label_source = label_file.classes, f"file:{label_file.path}"
    if fmt == "webdataset":
        table = _apply_webdataset_keys(table)
    table, duplicates = _sort_and_dedupe(table)
    if limit:
        rng = np.random.default_rng(0)  # a reproducible random subset, the same for any number of workers
        picked = np.sort(rng.choice(table.num_rows, size=min(limit, table.num_rows), replace=False))
        table = table.take(pa.array(picked, pa.int64()))
    return SourcePlan(table, rejects + duplicates, ignored, kind, label_source, classes, label_stats, tasks)


def fingerprint(plan: SourcePlan, shard_size: int, fmt: str, max_side: int) -> str:
    """What a finished destination must have been made from: keys, labels and the options that shape the bytes."""
    keys, labels = hashlib.sha256(), hashlib.sha256()
    for batch in plan.table.select(["key", "label"]).to_batches(max_chunksize=100_000):
        keys.update(("\n".join(batch.column(0).to_pylist()) + "\n").encode())
        labels.update(batch.column(1).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    options = f"|{shard_size}|{fmt}|max_side={max_side}".encode()
    return hashlib.sha256(keys.digest() + labels.digest() + options).hexdigest()
