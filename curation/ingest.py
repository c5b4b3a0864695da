"""Shard inputs: listing (paths, directories, globs, brace lists) and tolerant per-shard sample readers.

Plain Python over pyarrow filesystems, no Ray: the Ray Data stages that run these readers, one task
per shard, are in ``pipelines.readers``. A truncated shard, a link member or a sample without an
image becomes a recorded row (``read_error``), not an exception, so a job over many shards never
fails on one of them.

Locations are local paths or pyarrow filesystem uris (``file://``, ``s3://``,
``gs://``), with webdataset brace lists (``shard-{000000..000099}.tar``) and
globs. S3-compatible stores are configured the standard way, by environment:
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (e.g. MinIO or a local test
server), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (``storage.uri``
builds the filesystems). Ray workers may have been started before the driver
set them, so the read stages carry the driver's values to each task
(``storage_env``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.errors import InputError
# the storage layer owns uris and filesystems; these names stay importable from here for existing callers
from storage.io import open_input as storage_open_input
from storage.uri import STORAGE_ENV, apply_env as _apply_env, filesystem_for, join_uri, storage_env  # noqa: F401
from curation.shards import INT64_MAX, INT64_MIN, expand_braces, iter_tar_samples, normalize_meta, sniff_image_ext
from curation.decode import Intensity, decode_to_array

SAMPLE_COLUMNS = ("key", "image", "ext", "label", "meta", "source", "read_error")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".parquet")
#: files ``sslpipe shard`` writes beside its shards; a directory listing is not to take them for data
SIDE_FILES = ("index.parquet", "rejects.parquet", "manifest.parquet", "ignored.parquet")
#: why a file in a shard directory (or matched by a glob) is not read, for the listing of ignored files
IGNORED_REASONS = {
    "side_table": "the metadata table of the tar shard of the same name (img2dataset / NeMo Curator layout: "
                  "captions and per-sample fields); keys and images are read from the tar",
    "not_a_shard": "not a .tar, .tar.gz, .tgz or .parquet shard",
    "sslpipe_output": "an index, rejects, summary or plan file that sslpipe writes beside shards",
    "subfolder": "a folder inside a shard directory is not read; name it (or a glob) to read its shards",
    "hidden": "a hidden file or folder (name starts with '.')",
}


def open_input(uri: str, raw: bool = False):
    """Open a local path or any pyarrow filesystem uri (s3://, gs://, file://) for buffered streaming reads.

    pyarrow decompresses a ``.gz``/``.bz2``/... name on the fly; ``raw=True`` gives the stored
    bytes instead (a tar scan that must know whether, and how, the file is compressed)."""
    return storage_open_input(str(uri), raw=raw)


def open_input_file(uri: str):
    """Open for random access (``read_at``): range reads of one image, parquet footers."""
    filesystem, path = filesystem_for(str(uri))
    return filesystem.open_input_file(path)


def _is_side_file(info: pafs.FileInfo) -> bool:
    """Our own index/rejects tables and per-shard index parts: tables about shards, not shards."""
    return info.base_name in SIDE_FILES or "/_index/" in f"/{info.path}"


def _tar_stem(name: str) -> str | None:
    """``00042`` for ``00042.tar`` / ``.tar.gz`` / ``.tgz``; None for any other name."""
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def classify_shard_files(infos: Sequence[pafs.FileInfo], suffixes: Sequence[str] = SHARD_SUFFIXES
                         ) -> tuple[list[str], list[tuple[str, str]]]:
    """(shard paths, [(path, reason)] of everything else) for the entries of a shard directory or glob.

    A ``.parquet`` beside a tar of the same name is that tar's metadata table (img2dataset and
    NeMo Curator write ``00042.tar`` + ``00042.parquet`` + ``00042_stats.json``), not a shard;
    reasons are the keys of ``IGNORED_REASONS``. Both lists are sorted by path.
    """
    tars = {(i.path.rsplit("/", 1)[0] if "/" in i.path else "", _tar_stem(i.base_name))
            for i in infos if i.type == pafs.FileType.File and _tar_stem(i.base_name) is not None}
    shards: list[str] = []
    ignored: list[tuple[str, str]] = []
    for info in sorted(infos, key=lambda i: i.path):
        name, folder = info.base_name, info.path.rsplit("/", 1)[0] if "/" in info.path else ""
        if name.startswith("."):
            ignored.append((info.path, "hidden"))
        elif _is_side_file(info) or name in ("summary.json", "_index"):
            ignored.append((info.path, "sslpipe_output"))
        elif info.type == pafs.FileType.Directory:
            ignored.append((info.path, "subfolder"))
        elif name.endswith(".parquet") and (folder, name[: -len(".parquet")]) in tars:
            ignored.append((info.path, "side_table"))
        elif info.type == pafs.FileType.File and name.endswith(tuple(suffixes)):
            shards.append(info.path)
        else:
            ignored.append((info.path, "not_a_shard"))
    return shards, ignored


def expand_uris(spec: str | Sequence[str], suffixes: Sequence[str] = SHARD_SUFFIXES) -> list[str]:
    """Shard uris from paths, directories, globs and brace lists, on any filesystem.

    See ``expand_shard_inputs``, which also returns the files it passed over and why.
    """
    return expand_shard_inputs(spec, suffixes)[0]


def expand_shard_inputs(spec: str | Sequence[str], suffixes: Sequence[str] = SHARD_SUFFIXES
                        ) -> tuple[list[str], list[tuple[str, str]]]:
    """(shard uris, [(uri, reason)] of the files passed over) from paths, directories, globs and brace lists.

    A directory contributes its files ending in ``suffixes`` (not recursive: ``.tar``,
    ``.tar.gz``, ``.tgz``, ``.parquet``); everything else in it is listed as ignored with a
    reason (``classify_shard_files``): the tables and summary we write beside shards, the
    side ``.parquet``/``.json`` files of img2dataset / NeMo Curator output, sub-folders,
    hidden files. A glob is matched against a listing of its fixed prefix and its matches
    are sorted the same way. A file named explicitly is taken as it is. Order: sorted within
    each entry, entries in the order given, no repeats. Raises InputError naming the entry
    that matched nothing.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    found: list[str] = []
    ignored: list[tuple[str, str]] = []
    for entry in entries:
        for part in expand_braces(str(entry)):
            filesystem, path = filesystem_for(part)
            if any(ch in path for ch in "*?["):
                fixed = path[: min(path.find(c) for c in "*?[" if c in path)]
                base = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
                try:
                    recursive = "**" in path or path.count("/") > base.count("/") + 1
                    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive))
                except (FileNotFoundError, OSError) as exc:
                    raise InputError(f"cannot list {base!r} for {part!r}: {exc}") from exc
                matched = [i for i in infos if fnmatch.fnmatchcase(
                    i.path if base != "." else i.path.removeprefix("./"), path)]
                shards, passed = classify_shard_files(matched, suffixes)
                if not shards:
                    raise InputError(f"no shard matches {part!r}; check the pattern")
                found.extend(join_uri(part, m) for m in shards)
                ignored.extend((join_uri(part, m), reason) for m, reason in passed)
                continue
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"input does not exist: {part} (check the path, or run `sslpipe shard` first)")
            if info.type == pafs.FileType.Directory:
                shards, passed = classify_shard_files(filesystem.get_file_info(pafs.FileSelector(path)), suffixes)
                if not shards:
                    raise InputError(f"no {'/'.join(suffixes)} shards in {part}; for an image folder run "
                                     f"`sslpipe shard {part} OUT_DIR` first")
                found.extend(join_uri(part, m) for m in shards)
                ignored.extend((join_uri(part, m), reason) for m, reason in passed)
            else:
                found.append(part)
    return list(dict.fromkeys(found)), list(dict.fromkeys(ignored))


#: what a parquet shard may hold (``sslpipe shard --format parquet`` writes exactly this)
PARQUET_EXPECTED = ("{image}: binary (encoded JPEG/PNG/WebP bytes, required); optional: key: string, "
                    "label (or cls): int64, ext: string, meta: string (json)")


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or (
        hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def parquet_schema_problem(schema: pa.Schema, image_column: str = "image") -> tuple[str, str] | None:
    """(reason, message) when the columns of a parquet shard cannot be read as samples, else None.

    The message names the column, what it is, and the schema we expect, so the fix is
    obvious; reasons: ``no_image_column`` and ``bad_schema`` (a wrong type, or a column twice).
    """
    expected = "expected schema: " + PARQUET_EXPECTED.format(image=image_column)
    names = list(schema.names)
    if image_column not in names:
        return "no_image_column", f"no column {image_column!r} (columns: {sorted(names)}); {expected}"
    label_col = "label" if "label" in names else "cls"
    checks = ((image_column, _is_binary, "binary"), ("key", lambda t: _is_text(t) or pa.types.is_integer(t), "string"),
              (label_col, pa.types.is_integer, "an integer type (int64)"), ("ext", _is_text, "string"),
              ("meta", _is_text, "string (json)"))
    for name, ok, want in checks:
        found = schema.get_all_field_indices(name)
        if len(found) > 1:
            return "bad_schema", f"column {name!r} appears {len(found)} times; {expected}"
        if found and not ok(schema.field(found[0]).type):
            return "bad_schema", f"column {name!r} is {schema.field(found[0]).type}, expected {want}; {expected}"
    return None


def unsafe_key(key: str) -> bool:
    """A key that would become an escaping member name in the tars we write (absolute, ``..``, NUL)."""
    return key.startswith("/") or ".." in key.split("/") or "\0" in key


def clean_ext(ext: Any) -> str:
    """A file extension we can put in a member name (short, alphanumeric), else "" (sniffed later)."""
    text = str(ext or "")
    return text.lower() if text.isascii() and text.isalnum() and len(text) <= 8 else ""


def iter_parquet_samples(uri: str, image_column: str = "image", batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """Stream the rows of one parquet shard in the sample-row schema (``SAMPLE_COLUMNS``).

    Optional columns: ``key`` (else ``<file stem>/<row>``), ``label`` or
    ``cls`` (else -1), ``ext`` (else sniffed from the bytes), ``meta``. A null
    image is a ``no_image_member`` row; a file that is not parquet or breaks
    mid-way ends with a ``<uri>#truncated`` row, as a broken tar does. Columns
    of the wrong type make one ``<uri>#schema`` row (``parquet_schema_problem``);
    a label outside int64, metadata that is not json and a key that would escape
    a tar (``../``, absolute) are per-row ``bad_label`` / ``bad_meta`` / ``unsafe_path``.
    Reads ``batch_rows`` rows at a time, so memory does not grow with the file.
    """
    stem = PurePosixPath(str(uri).split("://", 1)[-1]).stem
    row = 0
    try:
        with open_input_file(uri) as handle:
            pf = pq.ParquetFile(handle)
            names = set(pf.schema_arrow.names)
            problem = parquet_schema_problem(pf.schema_arrow, image_column)
            if problem is not None:
                yield {"key": f"{uri}#schema", "image": None, "ext": "", "label": -1,
                       "meta": json.dumps({"error": problem[1]}), "source": str(uri), "read_error": problem[0]}
                return
            label_col = "label" if "label" in names else ("cls" if "cls" in names else None)
            wanted = [c for c in ("key", "ext", "meta") if c in names] + [image_column] + ([label_col] if label_col else [])
            for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
                cols = batch.to_pydict()
                for i in range(batch.num_rows):
                    image = cols[image_column][i]
                    image = bytes(image) if image is not None else None
                    ext = clean_ext(cols["ext"][i] if "ext" in cols else "") or (sniff_image_ext(image or b"") or "")
                    label = cols[label_col][i] if label_col else -1
                    label = -1 if label is None else int(label)
                    key = cols["key"][i] if "key" in cols and cols["key"][i] not in (None, "") else f"{stem}/{row:09d}"
                    meta, error = "", "" if image is not None else "no_image_member"
                    if "meta" in cols and cols["meta"][i]:
                        meta, meta_ok = normalize_meta(cols["meta"][i])
                        error = error or ("" if meta_ok else "bad_meta")
                    if not INT64_MIN <= label <= INT64_MAX:
                        label, error = -1, error or "bad_label"
                    if unsafe_key(str(key)):
                        error = "unsafe_path"
                    yield {"key": str(key), "image": image if not error else None, "ext": ext, "label": label,
                           "meta": meta, "source": str(uri), "read_error": error}
                    row += 1
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a bad footer
        yield {"key": f"{uri}#truncated", "image": None, "ext": "", "label": -1,
               "meta": json.dumps({"error": str(exc)[:200]}), "source": str(uri), "read_error": "truncated_shard"}


def iter_samples(uri: str, image_column: str = "image") -> Iterator[dict[str, Any]]:
    """Sample rows of one shard of either format, chosen by the file suffix (a tar may be gz/bz2/xz-compressed)."""
    if str(uri).endswith(".parquet"):
        yield from iter_parquet_samples(uri, image_column)
        return
    try:
        stream = open_input(str(uri))
    except OSError as exc:
        yield {"key": f"{uri}#unreadable", "image": None, "ext": "", "label": -1,
               "meta": json.dumps({"error": str(exc)[:200]}), "source": str(uri), "read_error": "unreadable_shard"}
        return
    with stream:
        yield from iter_tar_samples(stream, str(uri))


def decode_batch(batch: dict[str, np.ndarray], size: int, channels: int,
                 intensity: Intensity = "full_range") -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded bytes -> uint8 [N, size, size, C] pixels (rows that fail are dropped
    here only because curation already recorded them; training reads curated shards).
    ``intensity``: how 16-bit/float images are scaled (``data.intensity``, curation/decode.py)."""
    images, labels, keys = [], [], []
    for key, data, label in zip(batch["key"], batch["image"], batch["label"]):
        if data is None:
            continue
        try:
            images.append(decode_to_array(data, size, channels, intensity=intensity))
        except Exception:  # noqa: BLE001 - recorded by curation; defensive for un-curated input
            continue
        labels.append(int(label))
        keys.append(key)
    if not images:
        return {"key": np.array([], dtype=object), "image": np.zeros((0, size, size, channels), np.uint8),
                "label": np.zeros(0, np.int64)}
    return {"key": np.array(keys, dtype=object), "image": np.stack(images), "label": np.array(labels, np.int64)}
