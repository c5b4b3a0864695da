"""The storage layer on its own: locations, atomic writes (local and a real S3-compatible server),
the import contract, and filesystems that carry the driver's keys to a process without them."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import storage
from tests.object_store import BUCKET, moto_s3  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent


def test_storage_imports_none_of_the_layers_above_it() -> None:
    code = ("import sys, storage; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'curation', 'pipelines', 'ssl_models', 'ray', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_old_import_paths_are_the_storage_layer() -> None:
    """curation.ingest / curation.redact / curation.errors / pipelines.atomic re-export, not copy."""
    import curation.errors
    import curation.ingest
    import curation.redact
    import storage.credentials
    import storage.uri

    assert curation.errors.InputError is storage.InputError
    assert curation.ingest.filesystem_for is storage.uri.filesystem_for
    assert curation.ingest.storage_env is storage.uri.storage_env
    assert curation.redact.refuse_credentials is storage.credentials.refuse_credentials


def test_join_and_parent_keep_uris_intact(tmp_path: Path) -> None:
    assert storage.join("s3://b/runs/x/", "stages", "pool.json") == "s3://b/runs/x/stages/pool.json"
    assert storage.parent("s3://b/runs/x/config.yaml") == "s3://b/runs/x"
    assert storage.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    assert storage.join("file://" + str(tmp_path), "a") == str(tmp_path / "a")
    assert storage.is_uri("gs://b/x") and not storage.is_uri("file:///x") and not storage.is_uri("runs/x")


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_writes_appear_whole_or_not_at_all(where: str, tmp_path: Path, request) -> None:
    if where == "bucket":
        request.getfixturevalue("moto_s3")
        root = f"s3://{BUCKET}/atomic"
    else:
        root = str(tmp_path / "atomic")
    target = storage.join(root, "sub", "data.bin")
    with pytest.raises(RuntimeError):
        with storage.open_output(target) as f:
            f.write(b"half of it")
            raise RuntimeError("killed mid-write")
    assert not storage.exists(target) and storage.list_dir(storage.join(root, "sub")) == []  # no temp left either

    storage.write_json(storage.join(root, "a.json"), {"k": [1, 2]})
    with storage.open_output(target) as f:
        f.write(b"x" * 1000)
    assert storage.read_json(storage.join(root, "a.json")) == {"k": [1, 2]}
    assert storage.read_bytes(target) == b"x" * 1000
    assert storage.list_dir(root) == ["a.json", "sub"]
    assert storage.is_dir(storage.join(root, "sub")) and storage.is_file(target)
    with storage.local_copy(target) as local:
        assert Path(local).read_bytes() == b"x" * 1000
    storage.delete(root)
    assert not storage.exists(root) and storage.list_dir(root) == []
    storage.delete(root)  # nothing there is fine


def test_scratch_dir_of_a_uri_is_a_stable_local_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SSLPIPE_SCRATCH", str(tmp_path / "scratch"))
    assert storage.scratch_dir("s3://b/runs/x/") == tmp_path / "scratch" / "s3" / "b" / "runs" / "x"
    assert storage.scratch_dir(tmp_path / "local_run") == tmp_path / "local_run"


def test_a_pickled_filesystem_works_where_the_environment_has_no_keys(moto_s3) -> None:  # noqa: F811
    """What Ray Train's controller and workers receive as ``storage_filesystem``: built from the driver's
    environment, it must still reach the bucket in a process (another node) that has none of it."""
    storage.write_text(f"s3://{BUCKET}/probe/hello.txt", "hello")
    fs, path = storage.filesystem_for(f"s3://{BUCKET}/probe/hello.txt")
    # finalize_s3: pyarrow's AWS SDK can crash a process that exits with it still initialised
    code = ("import pickle, sys, pyarrow.fs; fs = pickle.loads(sys.stdin.buffer.read()); "
            f"print(fs.open_input_stream({path!r}).read().decode(), flush=True); del fs; pyarrow.fs.finalize_s3()")
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(fs), env=bare, capture_output=True,
                         check=True).stdout
    assert out.decode().strip() == "hello"


def test_a_ray_task_takes_the_drivers_storage_settings_exactly(monkeypatch) -> None:
    """Ray reuses worker processes: a session token left by an earlier job must not ride along with this job's
    keys (the store refuses every request as an invalid token)."""
    from storage.uri import apply_env

    monkeypatch.setenv("AWS_SESSION_TOKEN", "left-over-from-an-earlier-job")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "old-key")
    apply_env({"AWS_ACCESS_KEY_ID": "driver-key", "AWS_SECRET_ACCESS_KEY": "driver-secret"})
    assert os.environ["AWS_ACCESS_KEY_ID"] == "driver-key" and os.environ["AWS_SECRET_ACCESS_KEY"] == "driver-secret"
    assert "AWS_SESSION_TOKEN" not in os.environ
    apply_env(None)  # the driver itself: nothing changes
    assert os.environ["AWS_ACCESS_KEY_ID"] == "driver-key"
