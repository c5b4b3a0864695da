"""Webdataset tar shards: write them sorted by key, read them without trusting them.

Writing: members are grouped per sample and sorted by key, so a reader that
streams the tar never sees a sample split (Ray's ``read_webdataset`` splits
samples of unsorted tars, ray issue 44068). Every shard is written to a temp
name and renamed, so a killed job never leaves a half shard that looks whole.

Reading: shards are untrusted input. We never extract to disk (no path
traversal), never follow links, never unpickle (``.pyd``/``.pickle``/``.pth``
members are ignored), and a truncated or non-tar file yields an error record
instead of raising, so the job goes on and the loss is counted.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, cast

import storage
from curation.errors import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
#: members whose decoding would run code; we read past them and never load them
UNSAFE_EXTENSIONS = ("pyd", "pickle", "pkl", "pth", "pt", "npy")


@dataclass
class Sample:
    """One image sample as stored in a shard (the shard formats: README, "Running your own data")."""

    key: str
    image: bytes | None
    ext: str = "png"
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


def safe_member_name(name: str) -> str:
    """A tar member name as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` escapes.

    tarfile decodes such bytes to lone surrogates, which no parquet/arrow string
    column accepts; escaping keeps the sample under a stable, printable key.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename."""
    directory, base = os.path.split(safe_member_name(name))
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


#: the fixed fields of the ustar header we write (mode 0644, uid/gid 0, mtime 0, no link, no
#: owner names, regular file), laid out exactly as ``tarfile`` lays them out for such a member
_USTAR_MODE_IDS = b"0000644\x00" + b"0000000\x00" * 2
_USTAR_MTIME = b"00000000000\x00"
_USTAR_TAIL = b"0" + b"\x00" * 100 + b"ustar\x0000" + b"\x00" * (32 + 32 + 8 + 8 + 155 + 12)
#: checksum of a header whose name and size fields are all NUL (its checksum field counts as spaces)
_USTAR_BASE_SUM = sum(_USTAR_MODE_IDS) + sum(_USTAR_MTIME) + sum(_USTAR_TAIL) + 8 * ord(" ")
#: a member size must fit 11 octal digits in a plain ustar header (8 GiB)
_USTAR_MAX_SIZE = 8**11 - 1


def member_header(name: str, size: int) -> bytes:
    """The tar header of a regular-file member ``name`` of ``size`` bytes (mtime 0, mode 0644).

    Byte for byte what ``tarfile`` writes in PAX format, built directly for the usual case
    (an ASCII name of at most 100 bytes): ``tarfile`` spends most of a shard write copying
    and re-validating its ``TarInfo`` per member. Other names (long, non-ASCII) and huge
    sizes go through ``tarfile`` itself, which adds a pax extended header for them.
    """
    if name.isascii() and len(name) <= 100 and size <= _USTAR_MAX_SIZE:
        encoded = name.encode("ascii")
        size_field = b"%011o\x00" % size
        checksum = _USTAR_BASE_SUM + sum(encoded) + sum(size_field)
        return b"".join((encoded, b"\x00" * (100 - len(encoded)), _USTAR_MODE_IDS, size_field, _USTAR_MTIME,
                         b"%06o\x00 " % checksum, _USTAR_TAIL))
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_tar_stream(samples: Iterable[Sample], fileobj: IO[bytes]) -> list[tuple[str, int, int]]:
    """Write ``samples`` (sorted by key here) as a tar to a writable stream.

    Returns (key, offset, size) per sample: the byte offset and length of its
    image member's data inside the tar, so an index can range-read one image
    (a local ``seek`` or an S3 range GET) without scanning the shard. The stream
    is written front to back (no seek), so the target may be an object-store
    upload. The bytes are those ``tarfile`` writes (``member_header``), ending in
    two zero blocks padded to a 10 KiB record, as ``tarfile`` ends an archive.
    """
    entries: list[tuple[str, int, int]] = []
    position = 0
    for sample in sorted(samples, key=lambda s: s.key):
        members: list[tuple[str, bytes]] = []
        if sample.image is not None:
            members.append((f"{sample.key}.{sample.ext}", sample.image))
        members.append((f"{sample.key}.cls", str(int(sample.label)).encode()))
        if sample.meta:
            members.append((f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode()))
        offset, size = -1, 0
        chunk: list[bytes] = []
        for i, (name, payload) in enumerate(members):
            header = member_header(name, len(payload))
            position += len(header)
            if i == 0 and sample.image is not None:
                offset, size = position, len(payload)
            padding = _padded(len(payload)) - len(payload)
            chunk += (header, payload, b"\x00" * padding)
            position += len(payload) + padding
        fileobj.write(b"".join(chunk))  # one write per sample: object-store streams buffer anyway
        entries.append((sample.key, offset, size))
    end = position + 2 * tarfile.BLOCKSIZE
    end += -end % tarfile.RECORDSIZE
    fileobj.write(b"\x00" * (end - position))
    return entries


def _padded(n: int) -> int:
    return (n + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE


PARQUET_SCHEMA_FIELDS = (("key", "string"), ("image", "binary"), ("ext", "string"), ("label", "int64"), ("meta", "string"))


def write_parquet_stream(samples: Iterable[Sample], fileobj: IO[bytes], row_group_size: int = 256) -> list[tuple[str, int, int]]:
    """Write ``samples`` sorted by key as a parquet shard with an ``image`` binary column.

    Returns (key, row, size) per sample: for parquet the index ``offset`` is the
    row number. Small row groups keep a streaming reader's memory at a few
    hundred encoded images, whatever the shard size.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(samples, key=lambda s: s.key)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PARQUET_SCHEMA_FIELDS])
    with pq.ParquetWriter(fileobj, schema, compression="none") as writer:  # JPEG/PNG bytes do not compress
        for start in range(0, max(len(ordered), 1), row_group_size):
            chunk = ordered[start : start + row_group_size]
            writer.write_table(pa.table({
                "key": [x.key for x in chunk],
                "image": [x.image for x in chunk],
                "ext": [x.ext for x in chunk],
                "label": [int(x.label) for x in chunk],
                "meta": [json.dumps(x.meta, sort_keys=True) if x.meta else "" for x in chunk],
            }, schema=schema))
    return [(x.key, i, len(x.image or b"")) for i, x in enumerate(ordered)]


def write_shard(samples: Iterable[Sample], path: str | Path) -> int:
    """Write one tar shard atomically (``storage.open_output``); returns the sample count."""
    with storage.open_output(path) as f:
        return len(write_tar_stream(samples, f))


def write_shards(samples: Iterable[Sample], dest: str | Path, shard_size: int, prefix: str = "shard",
                 *, keep_existing: bool = False) -> list[str]:
    """Sort ``samples`` by key and write them as ``prefix-000000.tar``, ... of ``shard_size`` each; returns their paths.

    ``keep_existing``: a shard already there is not written again (a resumed build: shards are
    written atomically, so one that exists is complete).
    """
    ordered = sorted(samples, key=lambda s: s.key)
    dest = Path(dest)
    paths = []
    for start in range(0, len(ordered), shard_size):
        p = dest / f"{prefix}-{start // shard_size:06d}.tar"
        if not (keep_existing and p.exists()):
            write_shard(ordered[start : start + shard_size], p)
        paths.append(str(p))
    return paths


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def normalize_meta(raw: bytes | str) -> tuple[str, bool]:
    """(canonical json text, ok) for a sample's metadata; ("", False) when it is not usable json.

    Deeply nested json (``[[[[...``) exhausts the parser's recursion limit: that is bad
    metadata, not a reason to crash the read task.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.dumps(json.loads(text), sort_keys=True), True
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "", False


def _finish(key: str, parts: dict[str, bytes], source: str) -> dict[str, Any]:
    """Turn the members of one sample into a row; problems become a ``read_error``."""
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    label = -1
    error = ""
    if "cls" in parts:
        try:
            label = int(parts["cls"].decode("ascii").strip())
            if not INT64_MIN <= label <= INT64_MAX:  # labels are an int64 column everywhere downstream
                label, error = -1, "bad_label"
        except (UnicodeDecodeError, ValueError):
            error = "bad_label"
    meta = ""
    if "json" in parts:
        meta, meta_ok = normalize_meta(parts["json"])
        if not meta_ok:
            error = error or "bad_meta"
    if image_ext is None:
        error = "no_image_member"
    return {
        "key": key,
        "image": parts.get(image_ext) if image_ext else None,
        "ext": image_ext or "",
        "label": label,
        "meta": meta,
        "source": source,
        "read_error": error,
    }


class _TailRecorder:
    """Pass-through reader that remembers the last bytes it served.

    tarfile's stream mode treats a file that simply stops at a header boundary as
    a clean end of archive, so a truncated shard would lose samples silently. A
    real tar ends with two zero blocks; with the tail of the stream we can check
    that they are there.
    """

    KEEP = 64 * 1024

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.pos = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.pos += len(data)
        self.tail = (self.tail + data)[-self.KEEP :]
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def zeros_at(self, offset: int, length: int) -> bool:
        start = self.pos - len(self.tail)
        if offset < start or offset + length > self.pos:
            return False
        chunk = self.tail[offset - start : offset - start + length]
        return chunk == bytes(length)


def iter_tar_samples(fileobj: IO[bytes], source: str) -> Iterator[dict[str, Any]]:
    """Stream the samples of one tar shard as row dicts.

    Rows: key, image (bytes or None), ext, label, meta (json text), source,
    read_error ("" when fine). A member that is not a regular file (link,
    device, directory) or whose name escapes the archive (absolute, ``..``) is
    reported as its own row with ``read_error`` set and its bytes never read.
    A truncated or corrupt archive ends with one row whose key is
    ``<source>#truncated`` and reason ``truncated_shard``.
    """
    current_key: str | None = None
    parts: dict[str, bytes] = {}
    recorder = _TailRecorder(fileobj)
    try:
        with tarfile.open(fileobj=recorder, mode="r|*", encoding="utf-8") as tar:  # type: ignore[call-overload]
            for member in tar:
                key, ext = _split_member_name(member.name)
                if member.isdir():
                    continue
                unsafe_path = member.name.startswith("/") or ".." in member.name.split("/")
                if not member.isfile() or unsafe_path:
                    if member.issym() or member.islnk():
                        kind = "link_member"
                    elif not member.isfile():
                        kind = "special_member"
                    else:
                        kind = "unsafe_path"
                    yield {"key": f"{source}#{safe_member_name(member.name)}", "image": None, "ext": ext, "label": -1,
                           "meta": "", "source": source, "read_error": kind}
                    continue
                if key != current_key:
                    if current_key is not None:
                        yield _finish(current_key, parts, source)
                    current_key, parts = key, {}
                if ext in UNSAFE_EXTENSIONS:
                    continue  # never loaded: pickles can execute code
                handle = tar.extractfile(member)
                parts[ext] = handle.read() if handle is not None else b""
            uncompressed = getattr(tar.fileobj, "comptype", "tar") == "tar"
            end_offset = tar.offset
        if uncompressed:
            recorder.drain()
            if not recorder.zeros_at(end_offset, 1024):
                raise tarfile.ReadError(f"no end-of-archive marker at byte {end_offset}: the shard is truncated")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if current_key is not None:
            yield _finish(current_key, parts, source)
            current_key = None
        yield {"key": f"{source}#truncated", "image": None, "ext": "", "label": -1,
               "meta": json.dumps({"error": str(exc)[:200]}), "source": source, "read_error": "truncated_shard"}
    if current_key is not None:
        yield _finish(current_key, parts, source)


_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def sniff_image_ext(data: bytes) -> str | None:
    """The image format named by the first bytes, or None for anything else.

    A cheap gate at sharding time: it costs a few byte compares where a decode
    costs a millisecond, and catches text, HTML error pages and zero-filled files
    renamed to ``.jpg``; a damaged image with a good header is left to
    curation's full decode.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)


def scan_tar_index(fileobj: IO[bytes], source: str) -> Iterator[dict[str, Any]]:
    """Like ``iter_tar_samples`` but yields where each image lies instead of its bytes.

    Rows: key, ext, label, meta, source, offset, size, read_error. Used to plan
    a re-shard: only labels and metadata are kept in memory, the images are
    range-read later in key order. Same safety rules as ``iter_tar_samples``:
    links, special members and escaping names become error rows; pickles are
    skipped unread. Rows also carry ``compression``: "" for a plain tar, else
    ``gz``, ``bz2`` or ``xz``; the offsets of a compressed tar are then into its
    uncompressed stream (``open_tar_member_reader`` reads them back).
    """
    current: dict[str, Any] | None = None
    compression = ""

    def finish(row: dict[str, Any]) -> dict[str, Any]:
        if not row["ext"] and not row["read_error"]:
            row["read_error"] = "no_image_member"
        return row

    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", encoding="utf-8") as tar:
            comptype = getattr(tar.fileobj, "comptype", "tar")
            compression = "" if comptype == "tar" else comptype
            for member in tar:
                if member.isdir():
                    continue
                key, ext = _split_member_name(member.name)
                unsafe_path = member.name.startswith("/") or ".." in member.name.split("/")
                if not member.isfile() or unsafe_path:
                    kind = "link_member" if (member.issym() or member.islnk()) else (
                        "special_member" if not member.isfile() else "unsafe_path")
                    yield {"key": f"{source}#{safe_member_name(member.name)}", "ext": ext, "label": -1, "meta": "",
                           "source": source, "offset": -1, "size": 0, "read_error": kind, "compression": compression}
                    continue
                if current is None or key != current["key"]:
                    if current is not None:
                        yield finish(current)
                    current = {"key": key, "ext": "", "label": -1, "meta": "", "source": source, "offset": -1,
                               "size": 0, "read_error": "", "compression": compression}
                if ext in UNSAFE_EXTENSIONS:
                    continue
                if ext in IMAGE_EXTENSIONS and not current["ext"]:
                    current.update(ext=ext, offset=member.offset_data, size=member.size)
                elif ext in ("cls", "json"):
                    handle = tar.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                    # with an image part, _finish reports exactly the label/meta problem (else no_image_member)
                    parsed = _finish(key, {ext: payload, "png": b""}, source)
                    if ext == "cls":
                        current["label"] = parsed["label"]
                    else:
                        current["meta"] = parsed["meta"]
                    if parsed["read_error"] in ("bad_label", "bad_meta"):
                        current["read_error"] = current["read_error"] or parsed["read_error"]
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        # the sample being read when the archive broke may lack its image data: drop it as truncated
        yield {"key": f"{source}#truncated", "ext": "", "label": -1, "meta": json.dumps({"error": str(exc)[:200]}),
               "source": source, "offset": -1, "size": 0, "read_error": "truncated_shard", "compression": compression}
        if current is not None and current["offset"] >= 0:
            current = dict(current, read_error="truncated_shard")
            yield current
        current = None
    if current is not None:
        yield finish(current)


def expand_braces(pattern: str) -> list[str]:
    """Expand webdataset-style brace lists: ``a-{000..003}.tar``, ``{train,val}/x.tar``.

    Numeric ranges keep the zero padding of their first bound; several groups
    multiply out left to right. Text without braces comes back as itself.
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = pattern.find("}", start)
    if end < 0:
        raise InputError(f"unbalanced '{{' in {pattern!r}")
    body = pattern[start + 1 : end]
    if ".." in body and "," not in body:
        lo, _, hi = body.partition("..")
        if not (lo.isdigit() and hi.isdigit()):
            raise InputError(f"brace range {{{body}}} in {pattern!r} must be numeric, like {{000..099}}")
        width = len(lo) if lo.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[:start], pattern[end + 1 :]
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


def open_decompressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A seekable reader of the uncompressed bytes of a ``gz``/``bz2``/``xz`` tar (``scan_tar_index``'s
    ``compression``). Seeking forward decompresses and skips; seeking back starts over, so callers
    read a compressed shard's members in offset order."""
    import bz2
    import gzip
    import lzma

    openers = {"gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "bz2": lambda f: bz2.BZ2File(f, "rb"),
               "xz": lambda f: lzma.LZMAFile(f, "rb")}
    if compression not in openers:
        raise ValueError(f"unknown tar compression {compression!r}; expected one of {', '.join(openers)}")
    # the three readers are binary file objects; their stubs type them as their own stream classes
    return cast(IO[bytes], openers[compression](raw))


#: suffixes of the tar shards a directory may hold (plain, or compressed as a whole)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def list_shards(location: str | Path) -> list[str]:
    """Shard paths under a directory (``*.tar``, ``*.tar.gz``, ``*.tgz``, sorted), matching a glob or
    brace list, or one tar file.

    Raises InputError with a message that names the path and the fix.
    """
    text = str(location)
    if "{" in text:
        found = [p for part in expand_braces(text) for p in list_shards(part)]
        return sorted(dict.fromkeys(found))
    p = Path(text)
    if any(ch in text for ch in "*?["):
        found = sorted(glob.glob(text))
        if not found:
            raise InputError(f"no shard matches {text!r}; check the glob pattern")
        return found
    if not p.exists():
        raise InputError(f"input path does not exist: {p} (check the path, or run `sslpipe shard` first)")
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise InputError(f"{p} is not a tar shard; convert images with `sslpipe shard {p.parent} OUT_DIR`")
        return [str(p)]
    found = sorted(str(x) for x in p.iterdir() if x.name.endswith(TAR_SUFFIXES) and x.is_file())
    if not found:
        raise InputError(f"no .tar/.tar.gz/.tgz shards in {p}; for an image folder run `sslpipe shard {p} OUT_DIR` first")
    return found
