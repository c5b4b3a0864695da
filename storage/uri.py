"""Locations: local paths and object-store uris, and the pyarrow filesystem behind each.

A location is a local path (``runs/x``, ``/data/x``, ``file:///data/x``) or a uri
(``s3://bucket/prefix``, ``gs://bucket/prefix``). Object stores are configured the
standard way, by environment: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO,
Ceph, a local test server), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``GOOGLE_APPLICATION_CREDENTIALS``
for gs. Ray workers may have been started before the driver set them, so jobs that open
uris inside Ray tasks carry the driver's values along (``storage_env`` / ``apply_env``), and
the filesystems built here hold the driver's keys explicitly, so one pickled into a Ray actor
(Ray Train's ``storage_filesystem``) works on a node whose environment has none.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pyarrow.fs as pafs

from storage.credentials import refuse_credentials

#: environment variables that configure object storage; copied from the driver into Ray tasks
STORAGE_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
)


def storage_env() -> dict[str, str]:
    """The storage settings of this process, to hand to Ray tasks that open the same uris."""
    return {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}


def apply_env(env: dict[str, str] | None) -> None:
    """Inside a Ray task: take over the driver's storage settings (``storage_env``) exactly.

    Names the driver does not set are removed too: Ray reuses worker processes across jobs,
    and a session token left over from an earlier job would be sent with this job's keys
    (the store then refuses every request as an invalid token). ``None`` leaves the
    environment as it is (a call from the driver itself).
    """
    if env is None:
        return
    for name in STORAGE_ENV:
        if name in env:
            os.environ[name] = env[name]
        else:
            os.environ.pop(name, None)


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for an object-store uri (``s3://``, ``gs://``, ...); local paths and ``file://`` are not."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def scheme(location: str | os.PathLike[str]) -> str:
    """``s3``, ``gs``, ... for a uri; ``file`` for a local path."""
    text = str(location)
    return text.split("://", 1)[0] if is_uri(text) else "file"


def local_path(location: str | os.PathLike[str]) -> Path:
    """The local path of a local location (``file://`` stripped)."""
    text = str(location)
    if is_uri(text):
        raise ValueError(f"{text} is not a local path")
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base/part/...`` for a local path or a uri (``pathlib`` would turn ``s3://b`` into ``s3:/b``)."""
    if is_uri(base):
        pieces = [str(base).rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
        return "/".join(pieces)
    return str(local_path(base).joinpath(*parts))


def parent(location: str | os.PathLike[str]) -> str:
    """The folder holding ``location``."""
    if is_uri(location):
        head = str(location).rstrip("/")
        return head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return str(local_path(location).parent)


def basename(location: str | os.PathLike[str]) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """The region of an AWS bucket (what ``FileSystem.from_uri`` looks up too), None if it cannot be told."""
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _s3_filesystem(bucket: str) -> pafs.S3FileSystem | None:
    """An S3FileSystem from the standard environment, or None to let pyarrow resolve a plain uri.

    Built by hand when an endpoint or keys are set: ``S3FileSystem()`` does not read
    the endpoint variables itself, and keys given explicitly travel with the object
    when Ray pickles it into an actor on another node.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not endpoint and not (key and secret):
        return None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, object] = {}
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    if endpoint:
        kwargs.update(endpoint_override=endpoint, region=region or "us-east-1")
    else:
        kwargs["region"] = _bucket_region(bucket) or region or "us-east-1"  # as from_uri: the bucket's own
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a uri.

    For ``s3://`` the S3FileSystem comes from the standard environment
    (``_s3_filesystem``), so a MinIO/moto/Ceph endpoint given the standard way
    works for every pyarrow call. A uri carrying credentials is refused.
    """
    text = str(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), text
    refuse_credentials(text)  # KEY:SECRET@ or ?secret_key= would travel into every message and record
    if text.startswith("file://"):  # by hand: from_uri rejects glob characters such as '['
        return pafs.LocalFileSystem(), text[len("file://"):]
    if text.startswith("s3://"):
        fs = _s3_filesystem(text[len("s3://"):].split("/", 1)[0])
        if fs is not None:
            return fs, text[len("s3://"):]
    return pafs.FileSystem.from_uri(text)


def join_uri(uri: str, path: str) -> str:
    """Re-attach the scheme of ``uri`` to a filesystem-internal ``path`` (``filesystem_for`` strips it)."""
    if "://" in uri:
        return uri.split("://", 1)[0] + "://" + path
    return path
