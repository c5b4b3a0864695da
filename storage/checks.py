"""Check an object-store location before any compute is spent on it, and say what to fix.

pyarrow reports a missing bucket, refused credentials or an unreachable endpoint as an
``OSError`` deep inside whatever job first touches the uri. ``check_readable`` and
``check_writable`` touch it first, cheaply (one HEAD, one listing, and for a run
directory one tiny PUT + DELETE), and turn each failure into one ``InputError`` line that
names the uri (credentials masked) and the fix. Local paths are not checked here: their
jobs already say what is wrong with them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from storage.errors import InputError
from storage.credentials import redact, refuse_credentials
from storage.uri import filesystem_for, is_uri, join, scheme

#: where the AWS SDK inside pyarrow finds credentials other than the key variables
_AWS_CREDENTIAL_SOURCES = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                           "AWS_CONTAINER_CREDENTIALS_FULL_URI")
PROBE_NAME = ".sslpipe-write-probe"


def credentials_found(location: str) -> bool:
    """Whether this process has any credentials for ``location``'s store (it cannot see an instance role)."""
    kind = scheme(location)
    if kind == "s3":
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            return True
        if any(os.environ.get(name) for name in _AWS_CREDENTIAL_SOURCES):
            return True
        shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(Path.home() / ".aws" / "credentials")
        return Path(shared).expanduser().is_file()
    if kind == "gs":
        return bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")) or (
            Path.home() / ".config" / "gcloud" / "application_default_credentials.json").is_file()
    return True


def _credentials_fix(location: str) -> str:
    if scheme(location) == "gs":
        return "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run `gcloud auth application-default login`)"
    return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run on a node with an instance role); "
            "for MinIO or another S3-compatible store also AWS_ENDPOINT_URL_S3")


def _explain(location: str, exc: BaseException, action: str, what: str) -> InputError:
    """One line for a failed storage call: what failed, the likely cause, the fix."""
    detail = " ".join(str(exc).split())
    text = detail.upper()
    shown = redact(location)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not credentials_found(location):
        cause = f"no credentials found for {scheme(location)}:// (the store answered: {detail[:160]})"
        fix = _credentials_fix(location)
    elif "NETWORK_CONNECTION" in text or "COULD NOT CONNECT" in text or "COULDN'T CONNECT" in text \
            or "COULD NOT RESOLVE" in text:
        where = f" at {endpoint}" if endpoint else ""
        cause = f"the object store{where} cannot be reached ({detail[:160]})"
        fix = "check the network and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL" if scheme(location) == "s3" else \
            "check the network"
    elif "NO_SUCH_BUCKET" in text or "NOSUCHBUCKET" in text:
        cause = "the bucket does not exist"
        fix = "check the bucket name (and region / endpoint), or create the bucket"
    elif any(word in text for word in ("ACCESS_DENIED", "ACCESSDENIED", "FORBIDDEN", "403", "INVALID_ACCESS_KEY",
                                       "SIGNATURE", "PERMISSION")):
        cause = "access denied with the credentials in the environment"
        fix = (f"grant them {'list and read' if action == 'read' else 'list, write and delete'} permission on this "
               "bucket and prefix, or set credentials that have it")
    else:
        cause = detail[:200]
        fix = "check the uri and the storage settings (AWS_* / GOOGLE_APPLICATION_CREDENTIALS)"
    return InputError(redact(f"cannot {action} {shown} ({what}): {cause}; {fix}"))


def _bucket_and_path(location: str) -> tuple[pafs.FileSystem, str, str]:
    fs, path = filesystem_for(location)
    path = path.strip("/")
    return fs, path.split("/", 1)[0], path


def check_readable(location: str, what: str = "input") -> None:
    """Raise InputError (one line, the fix included) unless the bucket exists and the prefix can be listed.

    ``what`` names the setting in the message (``data.source``, ``run_dir``...).
    """
    if not is_uri(location):
        return
    refuse_credentials(location)
    try:
        fs, bucket, path = _bucket_and_path(location)
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise InputError(f"cannot read {redact(location)} ({what}): bucket {bucket!r} does not exist; check the "
                             "bucket name (and the region / endpoint), or create the bucket")
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise _explain(location, exc, "read", what) from None


def check_writable(location: str, what: str = "run_dir") -> None:
    """``check_readable``, then write and delete one tiny probe object under ``location``: a read-only
    credential must fail here, not after curation and training. Nothing stays behind."""
    if not is_uri(location):
        return
    check_readable(location, what)
    probe = join(location, f"{PROBE_NAME}-{uuid.uuid4().hex[:12]}")
    fs, path = filesystem_for(probe)
    try:
        with fs.open_output_stream(path) as out:
            out.write(b"")
        fs.delete_file(path)
    except (OSError, ValueError) as exc:
        raise _explain(location, exc, "write to", what) from None
