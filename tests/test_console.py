"""What a person sees in a terminal: sslpipe's progress, warnings and errors; Ray's internals go to RUN_DIR/run.log.

The CLI runs under a pseudo-terminal (as in a shell: Ray Data draws progress bars, Ray colours its
prefixes), on a small demo pool, twice in one run directory: first it fails inside a Ray Train worker,
then, fixed and resumed, it trains two epochs."""

from __future__ import annotations

import errno
import logging
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = ["data.limit=400", "data.demo_holdout=200", "pool.exact_duplicates=20", "pool.near_duplicates=10",
         "pool.blank=4", "pool.noise=4", "pool.corrupt=2", "train.epochs=2", "train.batch_size=64",
         "train.time_budget_s=0", "train.max_failures=0"]
#: what Ray and the libraries print by themselves; none of it belongs on a quiet terminal
RAY_INTERNALS = ("Reporting training result", "TrainingReport(", "Checkpoint successfully created",
                 "Loading faiss", "Execution plan of Dataset", "Starting execution of Dataset",
                 "RayTrainWorker pid=", "TrainController pid=", "SplitCoordinator", "Moving model to device",
                 "Setting up process group", "RayDeprecationWarning", "A new progress UI is available")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SSLPIPE_LINE = re.compile(r"^\[[a-z]+\] ")  # "[curate] kept ...", "[pretrain] epoch 2 ...", "[warning] ..."


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal (160 x 50) as its stdin/stdout/stderr; return its exit code and
    what the terminal received, without colour codes, one entry per line or progress-bar redraw."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": "/usr/bin:/bin", "HOME": str(cwd), "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal has exited
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))
    return code, "\n".join(part.strip() for part in re.split(r"[\r\n]+", text) if part.strip())


def assert_quiet(screen: str) -> None:
    for internal in RAY_INTERNALS:
        assert internal not in screen, f"{internal!r} on the terminal:\n{screen}"
    progress = screen.split("sslpipe: error: ")[0]  # what follows is the failure's own message
    for line in progress.splitlines():  # each line: an sslpipe line or a Ray Data dataset bar
        assert SSLPIPE_LINE.match(line) or "Dataset" in line, f"{line!r} in\n{screen}"


@pytest.mark.slow
def test_a_failing_then_resumed_run_shows_its_cause_and_progress_not_ray_internals(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = run_dir / "run.log"
    run_dir.mkdir()
    (run_dir / "tb").write_text("a file where the TensorBoard folder goes: rank 0 fails to open its writer")
    code, screen = run_in_terminal(["pretrain", str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}", *SMALL],
                                   cwd=tmp_path)
    assert_quiet(screen)
    assert code == 1, screen
    assert screen.count(f"[run] Ray's and the libraries' logs: {log}") == 1, screen
    assert "[curate] kept " in screen
    # the worker's error reaches the terminal, first line its cause; the full traceback is in the log
    cause = next(line for line in screen.splitlines() if line.startswith("sslpipe: error: "))
    tb_dir = re.escape(str(run_dir / "tb"))
    assert re.match(rf"sslpipe: error: \w+Error: \[Errno \d+\] (File exists|Not a directory): '{tb_dir}", cause), screen
    assert "[Rank 0 Error Snippet]" in screen and f"the full traceback is in {log}" in screen
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "WorkerGroupError" in text

    (run_dir / "tb").unlink()
    code, screen = run_in_terminal(["pretrain", str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}", *SMALL,
                                    "--resume"], cwd=tmp_path)
    assert_quiet(screen)
    assert code == 0, screen
    epochs = [line for line in screen.splitlines() if line.startswith("[pretrain] epoch ")]
    assert [line.split()[2] for line in epochs] == ["1", "2"], screen  # one line per epoch
    assert all(k in epochs[-1] for k in ("step", "loss", "img/s", "knn", "eta")), epochs[-1]
    # Ray's own lines were not lost: they are in the log, once per run, with the worker that wrote them
    text = log.read_text()
    assert "Reporting training result" in text and "(RayTrainWorker pid=" in text
    assert text.count("===== sslpipe pretrain ") == 2


@pytest.mark.slow
def test_verbose_brings_ray_output_back(tmp_path: Path) -> None:
    """--verbose: Ray prints as it always did (here: curation only, where Ray Data logs its plans)."""
    run_dir = tmp_path / "run"
    code, screen = run_in_terminal(["curate", str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}", *SMALL,
                                    "--verbose"], cwd=tmp_path)
    assert code == 0, screen
    assert "Execution plan of Dataset" in screen and "[curate] kept " in screen
    assert "Ray's and the libraries' logs" not in screen and not (run_dir / "run.log").exists()


# --------------------------------------------------------------------------- the pieces, without a terminal


def test_worker_output_goes_to_the_log_and_only_sslpipe_lines_to_the_terminal(tmp_path: Path) -> None:
    """A batch as Ray's driver receives it from a Ray Train worker (lines as they came in the demo)."""
    import io

    from pipelines.console import WorkerOutputRouter, _RunLog

    log, terminal, ray_printed = _RunLog(), io.StringIO(), []
    log.open(tmp_path / "run.log")
    router = WorkerOutputRouter(log, terminal, lambda data, ignore_prefix: ray_printed.append(data))
    lines = ["Loading faiss with AVX2 support.",
             "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'epoch': 1}) from rank 1",
             "[pretrain] epoch 1  step 15/45  loss 4.8536  lr 2.00e-03  706 img/s  knn 0.831  elapsed 6s  eta 11s",
             '{"__ray_tqdm_magic_token__": true, "x": 1, "pos": 0, "desc": "Running Dataset val"}',
             "[warning] method.name=mae masks image patches, which needs a ViT", "", "[dataset]: A new progress UI"]
    router({"pid": 15108, "actor_name": "RayTrainWorker", "ip": "10.0.0.2", "localhost": "10.0.0.2", "lines": lines,
            "is_err": False})
    router({"pid": "raylet", "ip": "10.0.0.2", "lines": ["A worker died: killed for memory"], "is_err": True})

    assert terminal.getvalue().splitlines() == [lines[2], lines[4]]
    text = (tmp_path / "run.log").read_text()
    for line in (lines[0], lines[1], lines[2], lines[4], lines[6]):
        assert f"(RayTrainWorker pid=15108) {line}\n" in text
    assert "__ray_tqdm_magic_token__" not in text
    assert [d["lines"] for d in ray_printed] == [["A worker died: killed for memory"]]  # Ray prints its notices


def test_sslpipe_warnings_in_a_worker_become_tagged_lines(capsys) -> None:
    from pipelines.console import _WorkerTagHandler

    logger = logging.getLogger("pipelines.models")
    handler = _WorkerTagHandler()
    logger.addHandler(handler)
    try:
        logger.warning("method.name=%s masks image patches", "mae")
        logger.error("no labelled images")
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[warning] method.name=mae masks image patches", "[error] no labelled images"]


def test_an_unexpected_failure_prints_no_credential_of_a_uri(capsys) -> None:
    """Any error, not only a user-input one, may quote a uri with keys in it: the terminal line, the traceback
    printed when there is no run log yet, and the log record all show it masked."""
    from pipelines.console import report_failure

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    try:
        raise OSError(f"When reading s3://AKIAIOSFODNN7EXAMPLE:{secret}@bucket/pool: connection refused")
    except OSError as exc:
        report_failure(exc)
    err = capsys.readouterr().err
    assert secret not in err and "AKIAIOSFODNN7EXAMPLE" not in err
    assert "sslpipe: error: OSError" in err and "s3://***@bucket/pool" in err
