"""Read, write, list and delete files at a location, local or in an object store, atomically.

A file written here either appears whole or not at all, so a killed job never leaves a half
file that looks whole: locally it is written to a temp name and renamed; in an object store a
single PUT or multipart upload becomes visible only when it completes, so the content is
first produced into a local spool and uploaded in one go (an exception while producing it
uploads nothing; pyarrow's output streams cannot abort an upload once begun).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

import pyarrow.fs as pafs

from storage.uri import basename, filesystem_for, is_uri, local_path

#: bytes kept in memory before a spooled upload moves to a local temp file
SPOOL_BYTES = 64 * 1024 * 1024
#: chunk size for copies between local files and object stores
COPY_CHUNK = 8 * 1024 * 1024
#: read-ahead of sequential readers: unbuffered, pyarrow's S3 stream sends one ranged GET per
#: ``read`` call, i.e. one per 512-byte tar header
READ_BUFFER = 1024 * 1024


def open_input(location: str | os.PathLike[str], raw: bool = False) -> Any:
    """A buffered sequential reader (pyarrow ``NativeFile``) for a local path or uri.

    A ``.gz``/``.bz2``/... name is decompressed on the fly unless ``raw`` (the stored bytes)."""
    fs, path = filesystem_for(location)
    return fs.open_input_stream(path, compression=None if raw else "detect", buffer_size=READ_BUFFER)


@contextlib.contextmanager
def open_output(location: str | os.PathLike[str], fs: pafs.FileSystem | None = None) -> Iterator[IO[bytes]]:
    """A writable binary file whose content appears at ``location`` only when the block ends cleanly.

    ``fs``: the filesystem ``location`` lies in (then ``location`` is the path inside it), for a caller
    that already holds one configured with a source's own options; by default it comes from the
    location. The local temp name is unique to this writer, so two writers racing for one path (a
    retried task) never write into each other's file; the last rename wins whole.
    """
    if fs is None:
        fs, path = filesystem_for(location)
    else:
        path = str(location)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        yield spool  # type: ignore[misc]
        spool.seek(0)
        with fs.open_output_stream(path) as out:
            shutil.copyfileobj(spool, out, COPY_CHUNK)


def write_bytes(location: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``location`` atomically; returns the location as a string."""
    if is_uri(location):
        fs, path = filesystem_for(location)
        with fs.open_output_stream(path) as out:  # one PUT: whole or nothing
            out.write(data)
    else:
        with open_output(location) as f:
            f.write(data)
    return str(location)


def write_text(location: str | os.PathLike[str], text: str) -> str:
    return write_bytes(location, text.encode("utf-8"))


def write_json(location: str | os.PathLike[str], obj: Any) -> str:
    """Pretty, key-sorted JSON (``default=str`` for paths and the like)."""
    return write_text(location, json.dumps(obj, indent=2, sort_keys=True, default=str))


def put_file(local: str | os.PathLike[str], location: str | os.PathLike[str]) -> str:
    """Copy a local file to ``location`` (local or uri) atomically."""
    with open(local, "rb") as src, open_output(location) as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
    return str(location)


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    if not is_uri(location):
        return local_path(location).read_bytes()
    with open_input(location) as f:
        return f.read()


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode("utf-8")


def read_json(location: str | os.PathLike[str]) -> Any:
    return json.loads(read_text(location))


def _info(location: str | os.PathLike[str]) -> pafs.FileInfo:
    fs, path = filesystem_for(location)
    return fs.get_file_info(path.rstrip("/") or path)


def exists(location: str | os.PathLike[str]) -> bool:
    """A file or folder (an object-store prefix holding objects) at ``location``."""
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike[str]) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | os.PathLike[str]) -> bool:
    return _info(location).type == pafs.FileType.Directory


def list_dir(location: str | os.PathLike[str]) -> list[str]:
    """Names of the files and folders directly under ``location``, sorted; [] when there is none."""
    fs, path = filesystem_for(location)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/") or path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def delete(location: str | os.PathLike[str]) -> None:
    """Remove the file or the whole folder at ``location``; nothing there is fine."""
    fs, path = filesystem_for(location)
    path = path.rstrip("/") or path
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


@contextlib.contextmanager
def local_copy(location: str | os.PathLike[str]) -> Iterator[Path]:
    """A local path holding the file at ``location``: the file itself when local, else a download
    into a temp folder removed on exit (for readers that need a real file, e.g. ``torch.load``)."""
    if not is_uri(location):
        yield local_path(location)
        return
    with tempfile.TemporaryDirectory(prefix="sslpipe-") as tmp:
        target = Path(tmp) / basename(location)
        with open_input(location) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
        yield target


def scratch_dir(location: str | os.PathLike[str]) -> Path:
    """A local folder that belongs to ``location``: the folder itself when local; for a uri a stable
    folder under ``$SSLPIPE_SCRATCH`` (default ``~/.cache/sslpipe``) named after it, for what must be
    local (a copy of the report to open, plots before upload). Created on first use."""
    if not is_uri(location):
        folder = local_path(location)
    else:
        root = Path(os.environ.get("SSLPIPE_SCRATCH") or Path.home() / ".cache" / "sslpipe").expanduser()
        scheme_name, rest = str(location).split("://", 1)
        folder = root / scheme_name / rest.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
