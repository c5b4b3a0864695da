"""Keep storage credentials out of messages, logs and the files a run writes.

pyarrow accepts credentials inside a uri (``s3://KEY:SECRET@bucket/path``,
``s3://bucket/path?access_key=...&secret_key=...``). sslpipe copies source uris
into error messages, run records, manifests and summaries, so such a uri would
leak its secret into all of them. We refuse it with a message that shows the
uri redacted and names the standard environment variables instead, and every
user-facing error goes through ``redact`` as well.
"""

from __future__ import annotations

import os
import re

from storage.errors import InputError

#: ``scheme://user:password@host`` - everything between ``://`` and ``@`` of the authority
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+)@")
#: query parameters that carry secrets (pyarrow's access_key/secret_key/session_token, presigned urls)
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&][^=&\s]*(?:key|secret|token|password|passwd|credential|signature)[^=&\s]*=)(?P<value>[^&\s'\"]*)",
    re.IGNORECASE,
)
#: environment variables whose values are secrets (masked wherever they would appear in a message)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
MASK = "***"


def redact(text: object) -> str:
    """``text`` with uri credentials and secret environment values replaced by ``***``."""
    out = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", str(text))
    out = _SECRET_PARAM.sub(lambda m: m.group("name") + MASK, out)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 8:  # short values would mask ordinary words
            out = out.replace(value, MASK)
    return out


def has_credentials(uri: str) -> bool:
    """True when ``uri`` carries a user/password part or a secret query parameter."""
    text = str(uri)
    return "://" in text and (_USERINFO.search(text) is not None or _SECRET_PARAM.search(text) is not None)


def refuse_credentials(uri: str) -> None:
    """Raise InputError (showing the uri redacted) when ``uri`` carries credentials."""
    if has_credentials(uri):
        raise InputError(
            f"credentials inside the uri {redact(uri)} are refused (they would be copied into logs, manifests "
            "and run records); give them by environment instead: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL_S3 for MinIO or other S3-compatible stores), or GOOGLE_APPLICATION_CREDENTIALS"
        )
