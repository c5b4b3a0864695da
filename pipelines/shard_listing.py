"""What ``sslpipe shard`` will read: every input sample as one row of a plan table, every skipped file with its reason.

Two kinds of input:

- An **image folder**, walked recursively: ``root/<class>/x.jpg``, date partitions
  (``2023/01/a.jpg``), files at the top, any mix. A sample's key is its path relative to
  the root without the extension (``2023/01/a``), so files of the same name in different
  folders stay apart. Files that are not images (captions, metadata, hidden files, links to
  folders, shards inside the tree) are listed as ignored with the reason.
- **Shards**: tar (plain, ``.tar.gz``, ``.tgz``) or parquet, by directory, glob, brace list
  or uri. They are scanned for keys, labels and where each image lies (no image bytes kept).
  The side ``.parquet``/``.json`` files of img2dataset and NeMo Curator output are passed
  over (``curation.ingest.classify_shard_files``).

The walking and scanning are functions of their arguments alone, so they run unchanged in
this process or as Ray tasks (``pipelines.shard_tasks``): the folder is split into subtrees,
the shards into groups, one task each. The plan does not depend on that split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.errors import InputError
from storage.uri import apply_env
from curation.ingest import (SHARD_SUFFIXES, SIDE_FILES, clean_ext, filesystem_for, join_uri,
                             open_input, open_input_file, parquet_schema_problem, unsafe_key)
from curation.shards import IMAGE_EXTENSIONS, INT64_MAX, INT64_MIN, TAR_SUFFIXES, normalize_meta, scan_tar_index

#: one row per planned sample: where its bytes are now (origin, kind, offset, size, compression)
#: and what it will be called; ``rank`` orders copies of one key (the first input wins)
PLAN_SCHEMA = pa.schema([
    ("key", pa.string()), ("label", pa.int64()), ("ext", pa.string()), ("meta", pa.string()),
    ("origin", pa.string()), ("kind", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
    ("compression", pa.string()), ("rank", pa.int64()),
])

#: why a file under an image folder is not read (the shard-directory reasons are in curation.ingest)
FOLDER_IGNORED_REASONS = {
    "not_an_image_file": f"the extension is not an image's ({', '.join(IMAGE_EXTENSIONS)}): captions, metadata, "
                         "documents",
    "shard_in_image_folder": "a shard inside an image folder is not opened; give shards as their own source",
    "hidden": "a hidden file or folder (name starts with '.')",
    "linked_folder": "a symbolic link to a folder is not followed (links can loop); give its target instead",
    "broken_link": "a symbolic link whose target does not exist",
    "special_file": "not a regular file (fifo, socket or device)",
    "unreadable_folder": "the folder cannot be listed (permissions?)",
    "name_not_utf8": "the file or folder name is not valid UTF-8 (shown with \\xNN escapes); rename it to read it",
}


@dataclass
class ListingPart:
    """What one walk or scan found: planned samples, rejected inputs, ignored files."""

    table: pa.Table
    rejects: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- what kind of source


def source_kind(src: str) -> str:
    """``folder`` for a directory with no shard file at its top, ``shards`` for anything else.

    Raises InputError for a path that does not exist, before anything else is done.
    """
    if any(ch in src for ch in "*?[{"):
        return "shards"
    fs, path = filesystem_for(src)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input path does not exist: {src} (check the path)")
    if info.type != pafs.FileType.Directory:
        return "shards"
    for entry in fs.get_file_info(pafs.FileSelector(path)):
        name = entry.base_name
        if (entry.type == pafs.FileType.File and name.endswith(SHARD_SUFFIXES) and name not in SIDE_FILES
                and not name.startswith(".")):
            return "shards"
    return "folder"


# --------------------------------------------------------------------------- image folders


@dataclass
class _Level:
    """One folder's direct content: image files (relative path), sub-folders (relative), ignored files."""

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def add_file(self, rel: str, location: str, name: str) -> None:
        reason = _file_reason(name) or ("name_not_utf8" if not _is_utf8(rel) else None)
        if reason:
            self.ignored.append((printable(location), reason))
        else:
            self.files.append(rel)


def _is_utf8(text: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python keeps them as lone surrogates): no key or table can hold it."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(path: str) -> str:
    """A path as valid UTF-8 text for the ignored-files list: undecodable bytes become ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _file_reason(name: str) -> str | None:
    """Why a file under an image folder is skipped, or None for an image."""
    if name.startswith("."):
        return "hidden"
    if name.endswith(TAR_SUFFIXES + (".parquet",)):
        return "shard_in_image_folder"
    _, dot, ext = name.rpartition(".")
    return None if dot and ext.lower() in IMAGE_EXTENSIONS else "not_an_image_file"


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if rel else root


def _list_local(root: str, rel: str) -> _Level:
    """One level of a local folder, with symbolic links handled explicitly (pyarrow follows folder links,
    and a link to an ancestor would be walked until the path is too long)."""
    level = _Level()
    folder = _join(root, rel)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        level.ignored.append((printable(folder), "unreadable_folder"))
        return level
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        shown = printable(entry.path)
        if entry.name.startswith("."):
            level.ignored.append((shown, "hidden"))
        elif entry.is_symlink():
            if entry.is_dir():
                level.ignored.append((shown, "linked_folder"))
            elif entry.is_file():
                level.add_file(child, entry.path, entry.name)
            else:
                level.ignored.append((shown, "broken_link"))
        elif entry.is_dir(follow_symlinks=False):
            level.folders.append(child)
        elif entry.is_file(follow_symlinks=False):
            level.add_file(child, entry.path, entry.name)
        else:
            level.ignored.append((shown, "special_file"))
    return level


def _list_remote(root: str, rel: str, recursive: bool) -> _Level:
    """A folder (one level, or everything below it) on an object store: no links there."""
    fs, base = filesystem_for(root)
    base = base.rstrip("/")
    level = _Level()
    folder = _join(base, rel)
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=recursive))
    except OSError:
        level.ignored.append((join_uri(root, folder), "unreadable_folder"))
        return level
    for info in sorted(infos, key=lambda i: i.path):
        child = info.path[len(base) + 1:]
        if any(part.startswith(".") for part in child.split("/")):
            level.ignored.append((join_uri(root, info.path), "hidden"))
        elif info.type == pafs.FileType.Directory:
            if not recursive:
                level.folders.append(child)
        elif info.type == pafs.FileType.File:
            level.add_file(child, join_uri(root, info.path), info.base_name)
    return level


def _list_level(root: str, rel: str) -> _Level:
    return _list_remote(root, rel, recursive=False) if "://" in root else _list_local(root, rel)


def _walk(root: str, rel: str) -> _Level:
    """Everything below ``root/rel``, depth first, sorted."""
    if "://" in root:
        return _list_remote(root, rel, recursive=True)
    found = _Level()
    stack = [rel]
    while stack:
        level = _list_local(root, stack.pop())
        found.files += level.files
        found.ignored += level.ignored
        stack.extend(reversed(level.folders))
    return found


def file_rows(root: str, files: list[str], class_index: dict[str, int] | None) -> pa.Table:
    """Plan rows for image files: key = relative path without the extension."""
    keys, labels, exts, metas, origins = [], [], [], [], []
    for rel in files:
        stem, _, ext = rel.rpartition(".")
        keys.append(stem)
        exts.append(ext.lower())
        metas.append(json.dumps({"file": rel}))
        origins.append(_join(root, rel))
        top = rel.split("/", 1)[0] if "/" in rel else None
        labels.append(class_index.get(top, -1) if class_index is not None and top is not None else -1)
    n = len(keys)
    return pa.table({"key": keys, "label": pa.array(labels, pa.int64()), "ext": exts, "meta": metas,
                     "origin": origins, "kind": ["file"] * n, "offset": pa.array([-1] * n, pa.int64()),
                     "size": pa.array([0] * n, pa.int64()), "compression": [""] * n,
                     "rank": pa.array([0] * n, pa.int64())}, schema=PLAN_SCHEMA)


def walk_folders_task(root: str, rels: list[str], class_index: dict[str, int] | None,
                      env: dict[str, str] | None = None) -> ListingPart:
    """Plan every image below each of ``rels`` (relative folders of ``root``): one listing task."""
    apply_env(env)
    files: list[str] = []
    ignored: list[tuple[str, str]] = []
    for rel in rels:
        found = _walk(root, rel)
        files += found.files
        ignored += found.ignored
    return ListingPart(file_rows(root, files, class_index), [], ignored)


@dataclass
class FolderPlan:
    """An image folder split for listing: files found by the driver, the sub-folders left to walk."""

    root: str
    top_files: list[str]
    subtrees: list[str]
    ignored: list[tuple[str, str]]
    classes: list[str]


def split_folder(src: str, min_subtrees: int) -> FolderPlan:
    """List the top of an image folder here, going down a level at a time (at most three) until there
    are ``min_subtrees`` folders to hand to listing tasks, or no more folders."""
    root = src.rstrip("/") or src
    top = _list_level(root, "")
    classes = sorted(PurePosixPath(f).name for f in top.folders)
    files, ignored, frontier = list(top.files), list(top.ignored), list(top.folders)
    depth = 1
    while frontier and len(frontier) < min_subtrees and depth < 3:
        deeper: list[str] = []
        for rel in frontier:
            level = _list_level(root, rel)
            files += level.files
            ignored += level.ignored
            deeper += level.folders
        frontier, depth = deeper, depth + 1
    return FolderPlan(root, files, frontier, ignored, classes)


# --------------------------------------------------------------------------- shards


def _scan_parquet(uri: str, rank: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    try:
        with open_input_file(uri) as handle:
            pf = pq.ParquetFile(handle)
            names = set(pf.schema_arrow.names)
            problem = parquet_schema_problem(pf.schema_arrow)
            if problem is not None:  # names the column, its type and the expected schema
                rejects.append({"key": f"{uri}#schema", "source": uri, "shard": "", "reason": problem[0],
                                "detail": problem[1]})
                return
            label_col = "label" if "label" in names else ("cls" if "cls" in names else None)
            cols = [c for c in ("key", "ext", "meta") if c in names] + ([label_col] if label_col else [])
            stem, row = PurePosixPath(uri.split("://", 1)[-1]).stem, 0
            for batch in pf.iter_batches(batch_size=4096, columns=cols or None):
                d = batch.to_pydict()
                for i in range(batch.num_rows):
                    key = str(d["key"][i]) if "key" in d and d["key"][i] not in (None, "") else f"{stem}/{row:09d}"
                    label = d[label_col][i] if label_col and d[label_col][i] is not None else -1
                    ext = clean_ext(d["ext"][i]) if "ext" in d else ""
                    meta, meta_ok = normalize_meta(d["meta"][i]) if "meta" in d and d["meta"][i] else ("", True)
                    reason = ("unsafe_path" if unsafe_key(key) else
                              "bad_label" if not INT64_MIN <= int(label) <= INT64_MAX else
                              "" if meta_ok else "bad_meta")
                    if reason:
                        rejects.append({"key": key, "source": uri, "shard": "", "reason": reason, "detail": ""})
                    else:
                        rows.append({"key": key, "label": int(label), "ext": ext, "meta": meta, "origin": uri,
                                     "kind": "parquet", "offset": row, "size": 0, "compression": "", "rank": rank})
                    row += 1
    except (OSError, ValueError) as exc:
        rejects.append({"key": f"{uri}#truncated", "source": uri, "shard": "", "reason": "truncated_shard",
                        "detail": str(exc)[:200]})


def _scan_tar(uri: str, rank: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    try:
        stream = open_input(uri, raw=True)  # tarfile must see the compression: offsets are then decompressed ones
    except OSError as exc:
        rejects.append({"key": f"{uri}#unreadable", "source": uri, "shard": "", "reason": "unreadable_shard",
                        "detail": str(exc)[:200]})
        return
    with stream:
        for row in scan_tar_index(stream, uri):
            if row["read_error"]:
                detail = json.loads(row["meta"])["error"] if row["meta"].startswith('{"error"') else ""
                rejects.append({"key": row["key"], "source": uri, "shard": "", "reason": row["read_error"],
                                "detail": detail})
            else:
                rows.append({"key": row["key"], "label": row["label"], "ext": row["ext"], "meta": row["meta"],
                             "origin": uri, "kind": "tar", "offset": row["offset"], "size": row["size"],
                             "compression": row.get("compression", ""), "rank": rank})


def scan_shards_task(uris: list[str], first_rank: int, env: dict[str, str] | None = None) -> ListingPart:
    """Plan the samples of input shards ``uris`` (ranks ``first_rank``...): one scanning task."""
    apply_env(env)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for rank, uri in enumerate(uris, start=first_rank):
        (_scan_parquet if uri.endswith(".parquet") else _scan_tar)(uri, rank, rows, rejects)
    return ListingPart(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA), rejects, [])
