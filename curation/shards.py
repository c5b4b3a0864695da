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

import io
import glob
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from curation.errors import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
#: members whose decoding would run code; we read past them and never load them
UNSAFE_EXTENSIONS = ("pyd", "pickle", "pkl", "pth", "pt", "npy")


@dataclass
class Sample:
    """One image sample as stored in a shard (DESIGN.md, Data model)."""

    key: str
    image: bytes | None
    ext: str = "png"
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


def _split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def write_shard(samples: Iterable[Sample], path: str | Path) -> int:
    """Write one tar shard atomically (temp + rename); returns the sample count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in sorted(samples, key=lambda s: s.key):
            members: list[tuple[str, bytes]] = []
            if sample.image is not None:
                members.append((f"{sample.key}.{sample.ext}", sample.image))
            members.append((f"{sample.key}.cls", str(int(sample.label)).encode()))
            if sample.meta:
                members.append((f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                info.mtime = 0  # reproducible bytes
                tar.addfile(info, io.BytesIO(payload))
            count += 1
    os.replace(tmp, path)
    return count


def write_shards(samples: Iterable[Sample], dest: str | Path, shard_size: int, prefix: str = "shard") -> list[Path]:
    """Sort ``samples`` by key and write them as ``prefix-000000.tar``, ... of ``shard_size`` each."""
    ordered = sorted(samples, key=lambda s: s.key)
    dest = Path(dest)
    paths = []
    for start in range(0, len(ordered), shard_size):
        p = dest / f"{prefix}-{start // shard_size:06d}.tar"
        write_shard(ordered[start : start + shard_size], p)
        paths.append(p)
    return paths


def _finish(key: str, parts: dict[str, bytes], source: str) -> dict[str, Any]:
    """Turn the members of one sample into a row; problems become a ``read_error``."""
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    label = -1
    error = ""
    if "cls" in parts:
        try:
            label = int(parts["cls"].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            error = "bad_label"
    meta = ""
    if "json" in parts:
        try:
            meta = json.dumps(json.loads(parts["json"].decode("utf-8")), sort_keys=True)
        except (UnicodeDecodeError, ValueError):
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
        with tarfile.open(fileobj=recorder, mode="r|*") as tar:  # type: ignore[call-overload]
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
                    yield {"key": f"{source}#{member.name}", "image": None, "ext": ext, "label": -1, "meta": "",
                           "source": source, "read_error": kind}
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


def list_shards(location: str | Path) -> list[str]:
    """Shard paths under a directory (``*.tar``, sorted) or matching a glob, or one tar file.

    Raises InputError with a message that names the path and the fix.
    """
    text = str(location)
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
    found = sorted(str(x) for x in p.glob("*.tar"))
    if not found:
        raise InputError(f"no .tar shards in {p}; for an image folder run `sslpipe shard {p} OUT_DIR` first")
    return found
