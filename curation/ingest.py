"""Ray Data stages that stream samples out of tar or parquet shards, on any filesystem.

We read shards with our own tolerant readers (``curation.shards``) inside a Ray
Data generator UDF instead of ``ray.data.read_webdataset``: a truncated shard,
a link member or a sample without an image must become a recorded row, not a
failed job. Each shard is one task; rows come out in chunks, so memory stays
bounded by ``rows_per_batch`` per task whatever the shard size.

Locations are local paths or pyarrow filesystem uris (``file://``, ``s3://``,
``gs://``), with webdataset brace lists (``shard-{000000..000099}.tar``) and
globs. S3-compatible stores are configured the standard way, by environment:
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (e.g. MinIO or a local test
server), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Those names are
what the AWS SDK inside pyarrow reads for credentials; the endpoint we pass
explicitly, since ``S3FileSystem()`` built by hand does not read it.
Ray workers may have been started before the driver set them, so the read
stages carry the driver's values to each task (``storage_env``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from curation.errors import InputError
from curation.shards import expand_braces, iter_tar_samples, sniff_image_ext
from curation.validate import decode_to_array

SAMPLE_COLUMNS = ("key", "image", "ext", "label", "meta", "source", "read_error")
SHARD_SUFFIXES = (".tar", ".parquet")
#: files ``sslpipe shard`` writes beside its shards; a directory listing is not to take them for data
SIDE_FILES = ("index.parquet", "rejects.parquet", "manifest.parquet")
#: environment variables that configure object storage; copied from the driver into read tasks
STORAGE_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
)


def storage_env() -> dict[str, str]:
    """The storage settings of this process, to hand to Ray tasks that open the same uris."""
    return {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}


def _apply_env(env: dict[str, str] | None) -> None:
    if env:
        os.environ.update(env)


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a uri.

    For ``s3://`` with an endpoint in the environment we build the
    S3FileSystem ourselves, so a MinIO/moto/Ceph endpoint given the standard
    way works for every pyarrow call, not only ``FileSystem.from_uri``.
    """
    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), text
    if text.startswith("file://"):  # by hand: from_uri rejects glob characters such as '['
        return pafs.LocalFileSystem(), text[len("file://"):]
    if text.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            return pafs.S3FileSystem(endpoint_override=endpoint, region=region), text[len("s3://"):]
    return pafs.FileSystem.from_uri(text)


def open_input(uri: str):
    """Open a local path or any pyarrow filesystem uri (s3://, gs://, file://) for streaming reads."""
    filesystem, path = filesystem_for(str(uri))
    return filesystem.open_input_stream(path)


def open_input_file(uri: str):
    """Open for random access (``read_at``): range reads of one image, parquet footers."""
    filesystem, path = filesystem_for(str(uri))
    return filesystem.open_input_file(path)


def join_uri(uri: str, path: str) -> str:
    """Re-attach the scheme of ``uri`` to a filesystem-internal ``path`` (``filesystem_for`` strips it)."""
    if "://" in uri:
        return uri.split("://", 1)[0] + "://" + path
    return path


def _is_side_file(info: pafs.FileInfo) -> bool:
    """Our own index/rejects tables and per-shard index parts: tables about shards, not shards."""
    return info.base_name in SIDE_FILES or "/_index/" in f"/{info.path}"


def expand_uris(spec: str | Sequence[str], suffixes: Sequence[str] = SHARD_SUFFIXES) -> list[str]:
    """Shard uris from paths, directories, globs and brace lists, on any filesystem.

    A directory contributes its files ending in ``suffixes`` (not recursive),
    except the index/rejects/manifest tables we write beside shards;
    a glob is matched against a listing of its fixed prefix. Order: sorted
    within each entry, entries in the order given, no repeats. Raises
    InputError naming the entry that matched nothing.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    found: list[str] = []
    for entry in entries:
        for part in expand_braces(str(entry)):
            filesystem, path = filesystem_for(part)
            if any(ch in path for ch in "*?["):
                fixed = path[: min(path.find(c) for c in "*?[" if c in path)]
                base = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
                try:
                    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive="**" in path or path.count("/") > base.count("/") + 1))
                except (FileNotFoundError, OSError) as exc:
                    raise InputError(f"cannot list {base!r} for {part!r}: {exc}") from exc
                matched = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(
                    i.path if base != "." else i.path.removeprefix("./"), path) and not _is_side_file(i))
                if not matched:
                    raise InputError(f"no shard matches {part!r}; check the pattern")
                found.extend(join_uri(part, m) for m in matched)
                continue
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"input does not exist: {part} (check the path, or run `sslpipe shard` first)")
            if info.type == pafs.FileType.Directory:
                infos = filesystem.get_file_info(pafs.FileSelector(path))
                inside = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(tuple(suffixes))
                                and not _is_side_file(i))
                if not inside:
                    raise InputError(f"no {'/'.join(suffixes)} shards in {part}; for an image folder run "
                                     f"`sslpipe shard {part} OUT_DIR` first")
                found.extend(join_uri(part, m) for m in inside)
            else:
                found.append(part)
    return list(dict.fromkeys(found))


def _rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in SAMPLE_COLUMNS}
    batch["label"] = batch["label"].astype(np.int64)
    return batch


def iter_parquet_samples(uri: str, image_column: str = "image", batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """Stream the rows of one parquet shard in the sample-row schema (``SAMPLE_COLUMNS``).

    Optional columns: ``key`` (else ``<file stem>/<row>``), ``label`` or
    ``cls`` (else -1), ``ext`` (else sniffed from the bytes), ``meta``. A null
    image is a ``no_image_member`` row; a file that is not parquet or breaks
    mid-way ends with a ``<uri>#truncated`` row, as a broken tar does.
    Reads ``batch_rows`` rows at a time, so memory does not grow with the file.
    """
    stem = PurePosixPath(str(uri).split("://", 1)[-1]).stem
    row = 0
    try:
        with open_input_file(uri) as handle:
            pf = pq.ParquetFile(handle)
            names = set(pf.schema_arrow.names)
            if image_column not in names:
                yield {"key": f"{uri}#schema", "image": None, "ext": "", "label": -1,
                       "meta": json.dumps({"error": f"no column {image_column!r}; columns: {sorted(names)}"}),
                       "source": str(uri), "read_error": "no_image_column"}
                return
            label_col = "label" if "label" in names else ("cls" if "cls" in names else None)
            wanted = [c for c in ("key", "ext", "meta") if c in names] + [image_column] + ([label_col] if label_col else [])
            for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
                cols = batch.to_pydict()
                for i in range(batch.num_rows):
                    image = cols[image_column][i]
                    ext = cols["ext"][i] if "ext" in cols and cols["ext"][i] else (sniff_image_ext(image or b"") or "")
                    label = cols[label_col][i] if label_col else -1
                    yield {
                        "key": cols["key"][i] if "key" in cols and cols["key"][i] else f"{stem}/{row:09d}",
                        "image": image,
                        "ext": ext,
                        "label": int(label) if label is not None else -1,
                        "meta": (cols["meta"][i] or "") if "meta" in cols else "",
                        "source": str(uri),
                        "read_error": "" if image is not None else "no_image_member",
                    }
                    row += 1
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a bad footer
        yield {"key": f"{uri}#truncated", "image": None, "ext": "", "label": -1,
               "meta": json.dumps({"error": str(exc)[:200]}), "source": str(uri), "read_error": "truncated_shard"}


def iter_samples(uri: str, image_column: str = "image") -> Iterator[dict[str, Any]]:
    """Sample rows of one shard of either format, chosen by the file suffix."""
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


def expand_shards(batch: dict[str, np.ndarray], rows_per_batch: int = 1024, image_column: str = "image",
                  env: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: a batch of shard uris in, batches of sample rows out."""
    _apply_env(env)
    for uri in batch["path"]:
        rows: list[dict[str, Any]] = []
        for row in iter_samples(str(uri), image_column):
            rows.append(row)
            if len(rows) >= rows_per_batch:
                yield _rows_to_batch(rows)
                rows = []
        if rows:
            yield _rows_to_batch(rows)


def _read(paths: str | Sequence[str], rows_per_batch: int, image_column: str) -> ray.data.Dataset:
    uris = expand_uris(paths)
    if not uris:
        raise ValueError("no shards to read")
    ds = ray.data.from_items([{"path": p} for p in uris], override_num_blocks=len(uris))
    return ds.map_batches(expand_shards, batch_size=1,
                          fn_kwargs={"rows_per_batch": rows_per_batch, "image_column": image_column, "env": storage_env()})


def read_shards(paths: str | Sequence[str], rows_per_batch: int = 1024) -> ray.data.Dataset:
    """A Dataset of sample rows (``SAMPLE_COLUMNS``) from tar or parquet shards.

    ``paths``: uris, directories, globs or brace lists (``expand_uris``).
    """
    if not paths:
        raise ValueError("no shards to read")
    return _read(paths, rows_per_batch, "image")


def read_parquet_images(paths: str | Sequence[str], image_column: str = "image", rows_per_batch: int = 1024) -> ray.data.Dataset:
    """Parquet files with an encoded-image column -> the same row schema as ``read_shards``."""
    if not paths:
        raise ValueError("no parquet files to read")
    return _read(paths, rows_per_batch, image_column)


def decode_batch(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded bytes -> uint8 [N, size, size, C] pixels (rows that fail are dropped
    here only because curation already recorded them; training reads curated shards)."""
    images, labels, keys = [], [], []
    for key, data, label in zip(batch["key"], batch["image"], batch["label"]):
        if data is None:
            continue
        try:
            images.append(decode_to_array(data, size, channels))
        except Exception:  # noqa: BLE001 - recorded by curation; defensive for un-curated input
            continue
        labels.append(int(label))
        keys.append(key)
    if not images:
        return {"key": np.array([], dtype=object), "image": np.zeros((0, size, size, channels), np.uint8),
                "label": np.zeros(0, np.int64)}
    return {"key": np.array(keys, dtype=object), "image": np.stack(images), "label": np.array(labels, np.int64)}


def read_decoded(paths: str | Sequence[str], size: int, channels: int) -> ray.data.Dataset:
    """Shards -> Dataset of {key, image uint8 [size,size,C], label}, the training feed."""
    return read_shards(paths).map_batches(decode_batch, batch_size=256, fn_kwargs={"size": size, "channels": channels})
