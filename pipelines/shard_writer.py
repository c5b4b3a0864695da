"""Write one output shard of ``sslpipe shard``: fetch its images, check them, cap their size, write shard + index part.

``write_shard_task`` is a pure function of its slice of the plan, so it runs the same in
this process or as a Ray task on any node, and a shard's bytes do not depend on which. Each
output appears atomically (temp name + rename; one PUT on object stores), the index part
before the shard, so an existing shard file always means "finished" and a re-run after a
kill redoes only what is missing. Temp names are unique per writer: a task orphaned by a
killed driver may still be finishing the same shard, and both then write identical bytes.
"""

from __future__ import annotations

import io
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from curation.decode import open_image
from curation.ingest import filesystem_for, open_input_file
import storage
from storage.uri import apply_env
from curation.shards import Sample, open_decompressed, sniff_image_ext, write_parquet_stream, write_tar_stream

SIDE_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                         ("label", pa.int64()), ("source", pa.string()), ("reason", pa.string()),
                         ("detail", pa.string())])
#: JPEG/WebP quality of an image re-encoded by ``--max-side``
REENCODE_QUALITY = 95


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    with storage.open_output(path, fs) as f:
        pq.write_table(table, f)


class Loader:
    """Fetches the image bytes of planned samples, keeping the current input open between samples.

    Compressed tars are read through one decompressing stream per input, moving forward only
    as long as the caller asks in offset order (``write_shard_task`` does).
    """

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}
        self._group: tuple[str, int] | None = None
        self._group_rows: list[Any] = []
        self._group_start = 0

    def _file(self, uri: str) -> Any:
        if uri not in self._files:
            self._files[uri] = open_input_file(uri)
        return self._files[uri]

    def load(self, row: dict[str, Any]) -> bytes | None:
        origin, kind, offset = row["origin"], row["kind"], row["offset"]
        if kind == "file":
            if "://" in origin:
                fs, path = filesystem_for(origin)
                with fs.open_input_stream(path) as f:
                    return f.read()
            with open(origin, "rb") as f:
                return f.read()
        if kind == "tar" and row["compression"]:
            stream = self._streams.get(origin)
            if stream is None:
                stream = self._streams[origin] = open_decompressed(self._file(origin), row["compression"])
            stream.seek(offset)
            data = stream.read(row["size"])
            if len(data) != row["size"]:
                raise OSError(f"{origin} ends inside the image at uncompressed byte {offset}")
            return data
        if kind == "tar":
            return self._file(origin).read_at(row["size"], offset)
        pf = pq.ParquetFile(self._file(origin))
        start = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if offset < start + n:
                if self._group != (origin, rg):
                    self._group_rows = pf.read_row_group(rg, columns=["image"]).column("image").to_pylist()
                    self._group, self._group_start = (origin, rg), start
                return self._group_rows[offset - self._group_start]
            start += n
        raise OSError(f"row {offset} is past the end of {origin}")

    def close(self) -> None:
        for handle in list(self._streams.values()) + list(self._files.values()):
            handle.close()
        self._streams.clear()
        self._files.clear()


def cap_longer_side(data: bytes, max_side: int) -> tuple[bytes, str, tuple[int, int]] | None:
    """(new bytes, ext, original (w, h)) when the image's longer side is over ``max_side``, else None.

    The size comes from the header, so images within the cap cost no decode and keep their
    bytes. A larger one is decoded (a JPEG at the largest 1/2..1/8 DCT reduction that still
    covers the target), resized with Lanczos and re-encoded in its own format where that
    format can hold its pixels (JPEG/WebP at quality 95, EXIF and ICC profile kept), else as
    PNG (8- and 16-bit) or TIFF (32-bit integer and float): bit depth is never reduced.
    """
    im = open_image(data)
    w, h = im.size
    if max(w, h) <= max_side:
        return None
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    source_format = im.format
    if source_format == "JPEG":
        im.draft(im.mode, size)
    im.load()
    info = {k: im.info[k] for k in ("exif", "icc_profile") if im.info.get(k)}
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    resized = im.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if source_format == "JPEG" and resized.mode in ("L", "RGB", "CMYK"):
        resized.save(out, "JPEG", quality=REENCODE_QUALITY, **info)
        ext = "jpg"
    elif source_format == "WEBP" and resized.mode in ("RGB", "RGBA"):
        resized.save(out, "WEBP", quality=REENCODE_QUALITY, **info)
        ext = "webp"
    elif resized.mode in ("L", "LA", "RGB", "RGBA", "I;16"):
        resized.save(out, "PNG", **{k: v for k, v in info.items() if k == "icc_profile"})
        ext = "png"
    else:
        resized.save(out, "TIFF", compression="tiff_deflate")
        ext = "tif"
    return out.getvalue(), ext, (w, h)


@dataclass
class WrittenShard:
    """What one write task did: its index part (ok rows and rejects) and where it ran."""

    number: int
    side: pa.Table
    pid: int
    node: str  # the Ray node id, or this host's name outside Ray


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()


def write_shard_task(plan: pa.Table, start: int, stop: int, number: int, name: str, dest: str, fmt: str,
                     max_side: int, env: dict[str, str] | None = None) -> WrittenShard:
    """Read, check and write rows ``start:stop`` of ``plan`` as output shard ``name`` plus its index part."""
    apply_env(env)
    fs, root = filesystem_for(dest)
    root = root.rstrip("/")
    data_path, side_path = f"{root}/{name}", f"{root}/_index/shard-{number:06d}.parquet"
    rows = plan.slice(start, stop - start).to_pylist()
    # fetch in input order (sequential reads; a compressed tar is decompressed once, forward), write in key order
    fetch_order = sorted(range(len(rows)), key=lambda i: (rows[i]["origin"], rows[i]["offset"]))
    fetched: dict[int, bytes | None] = {}
    failures: dict[int, str] = {}
    loader = Loader()
    try:
        for i in fetch_order:
            try:
                fetched[i] = loader.load(rows[i])
            except (OSError, ValueError, EOFError) as exc:
                failures[i] = str(exc)[:200]
    finally:
        loader.close()
    samples, sources, rejects, details = [], {}, [], {}
    for i, row in enumerate(rows):
        data = fetched.get(i)
        if i in failures:
            rejects.append((row, "unreadable", failures[i]))
        elif data is None:
            rejects.append((row, "no_image_member", ""))
        elif len(data) == 0:
            rejects.append((row, "empty_file", ""))
        elif sniff_image_ext(data) is None:
            rejects.append((row, "not_an_image", data[:16].hex()))
        else:
            ext = row["ext"] or sniff_image_ext(data) or "jpg"
            meta = json.loads(row["meta"]) if row["meta"] else {}
            if max_side:
                try:
                    capped = cap_longer_side(data, max_side)
                except Exception as exc:  # noqa: BLE001 - kept as it is; curation's full decode judges it
                    capped, details[row["key"]] = None, f"not resized: {str(exc)[:150]}"
                if capped is not None:
                    data, ext, original = capped
                    meta = {**(meta if isinstance(meta, dict) else {"meta": meta}), "resized_from": list(original)}
                    details[row["key"]] = f"resized from {original[0]}x{original[1]}"
            samples.append(Sample(row["key"], data, ext, row["label"], meta))
            sources[row["key"]] = row["origin"]
    writer = write_tar_stream if fmt == "webdataset" else write_parquet_stream
    labels = {s.key: s.label for s in samples}
    with storage.open_output(data_path, fs) as f:
        located = writer(samples, f)
        side_rows = [{"key": k, "shard": name, "offset": o, "size": n, "label": labels[k], "source": sources[k],
                      "reason": "ok", "detail": details.get(k, "")} for k, o, n in located]
        side_rows += [{"key": r["key"], "shard": name, "offset": -1, "size": 0, "label": r["label"],
                       "source": r["origin"], "reason": reason, "detail": detail} for r, reason, detail in rejects]
        side = pa.Table.from_pylist(side_rows, schema=SIDE_SCHEMA)
        # the index part lands before the shard does (rename / upload completion on leaving this block):
        # an existing shard file therefore always has its index part, and the shard file marks "done"
        write_table(fs, side_path, side)
    return WrittenShard(number, side, os.getpid(), _node())
