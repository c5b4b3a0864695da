"""The storage layer: locations (local paths and ``s3://`` / ``gs://`` uris), their filesystems,
atomic reads and writes, credential redaction and the user-facing ``InputError``.

It sits below ``curation`` and ``pipelines`` and imports neither (nor ``ssl_models``); anything
that writes into a run directory should go through it, so that the run directory may be a bucket::

    import storage
    out = storage.join(run_dir, "eval", "summary.json")   # "s3://b/runs/x/eval/summary.json" or a local path
    storage.write_json(out, {"top1": 0.9})                  # whole or not at all, local or bucket
    if storage.exists(out): data = storage.read_json(out)
    with storage.open_output(storage.join(run_dir, "big.parquet")) as f: pq.write_table(table, f)
    with storage.local_copy(checkpoint_uri) as path: torch.load(path, weights_only=True)
"""

from storage.checks import check_readable, check_writable, credentials_found
from storage.errors import InputError
from storage.io import (delete, exists, is_dir, is_file, list_dir, local_copy, open_input, open_output, put_file,
                        read_bytes, read_json, read_text, scratch_dir, write_bytes, write_json, write_text)
from storage.credentials import has_credentials, redact, refuse_credentials
from storage.uri import (STORAGE_ENV, apply_env, basename, filesystem_for, is_uri, join, join_uri, local_path, parent,
                         scheme, storage_env)

__all__ = [
    "InputError", "STORAGE_ENV", "apply_env", "basename", "check_readable", "check_writable", "credentials_found",
    "delete", "exists", "filesystem_for", "has_credentials", "is_dir", "is_file", "is_uri", "join", "join_uri",
    "list_dir", "local_copy", "local_path", "open_input", "open_output", "parent", "put_file", "read_bytes", "read_json",
    "read_text", "redact", "refuse_credentials", "scheme", "scratch_dir", "storage_env", "write_bytes",
    "write_json", "write_text",
]
