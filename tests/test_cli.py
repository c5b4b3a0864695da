"""CLI errors: one line naming the path and the fix, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def sslpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_every_verb(tmp_path: Path) -> None:
    proc = sslpipe("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for verb in ("demo", "run", "shard", "curate", "pretrain", "eval", "report"):
        assert verb in proc.stdout


def test_missing_input_path(tmp_path: Path) -> None:
    proc = sslpipe("shard", str(tmp_path / "missing"), str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, "does not exist", str(tmp_path / "missing"))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = sslpipe("shard", str(tmp_path / "empty"), str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, "no images", "empty")


def test_not_a_tar_where_shards_are_expected(tmp_path: Path) -> None:
    fake = tmp_path / "data.tar"
    fake.write_text("not a tar at all")
    proc = sslpipe("run", str(REPO / "configs" / "demo.yaml"), f"data.source={fake}", f"eval.bank_source={fake}",
                   f"eval.query_source={fake}", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_user_error(proc, "is not a tar shard", str(fake), "sslpipe shard")


def test_bad_config_key(tmp_path: Path) -> None:
    proc = sslpipe("run", str(REPO / "configs" / "demo.yaml"), "train.epohcs=3", cwd=tmp_path)
    assert_user_error(proc, "train.epohcs", "allowed keys")


def test_missing_config_file(tmp_path: Path) -> None:
    proc = sslpipe("run", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert_user_error(proc, "config file not found")


def test_report_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = sslpipe("report", str(tmp_path), cwd=tmp_path)
    assert_user_error(proc, "not an sslpipe run directory")


def test_existing_run_is_not_overwritten_silently(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "pool.json").write_text("{}")
    proc = sslpipe("run", str(REPO / "configs" / "demo.yaml"), f"run_dir={run}", cwd=tmp_path)
    assert_user_error(proc, "--resume", "--overwrite")


@pytest.mark.parametrize("member", ["../evil.png", "/abs.png"])
def test_tar_listing_accepts_only_tars(tmp_path: Path, member: str) -> None:
    """A real tar is accepted by list_shards even when its members are hostile (they are handled by the reader)."""
    from curation.shards import list_shards

    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(member)
        tar.addfile(info)
    assert list_shards(path) == [str(path)]
