"""`sslpipe shard` on Ray: listing and writing as tasks, the same shards for any number of workers, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from pipelines.sources import shard_source
from tests.ingest.helpers import write_nested_tree

REPO = Path(__file__).resolve().parents[2]


def _outputs(dest: Path) -> dict[str, bytes]:
    """Every shard and table ``sslpipe shard`` wrote, by name (summary.json aside: it says how the run went)."""
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir()) if p.is_file() and p.name != "summary.json"}


def _summary(dest: Path) -> dict:
    return json.loads((dest / "summary.json").read_text())


@pytest.fixture()
def nested(tmp_path: Path, mnist_digits) -> tuple[Path, dict[str, bytes]]:
    images, _ = mnist_digits
    root = tmp_path / "photos"
    return root, write_nested_tree(root, images, 240)


def test_same_shards_in_process_and_on_one_or_all_ray_workers(tmp_path: Path, nested, ray_session) -> None:
    root, files = nested
    runs = {"in_process": 0, "one_worker": 1, "all_workers": None}
    for name, workers in runs.items():
        shard_source(str(root), str(tmp_path / name), shard_size=30, labels="none", workers=workers)
    reference = _outputs(tmp_path / "in_process")
    assert sorted(n for n in reference if n.startswith("shard-")) == [f"shard-{i:06d}.tar" for i in range(8)]
    for name in ("one_worker", "all_workers"):
        assert _outputs(tmp_path / name) == reference, name  # byte for byte: shards, index, rejects, ignored
    index = pq.read_table(tmp_path / "all_workers" / "index.parquet").to_pylist()
    assert [r["key"] for r in index] == sorted(files)  # every image, keyed by its relative path
    local, one, many = (_summary(tmp_path / n)["this_run"] for n in runs)
    assert local["ran"] == "in-process" and local["processes"] == 1
    assert one["ran"] == many["ran"] == "ray"
    # four folders deep: the driver lists three levels, the subtrees below are walked by listing tasks
    assert one["listing_tasks"] >= 2 and many["listing_tasks"] >= 2
    assert many["write_tasks"] == 8 and many["processes"] >= 2  # shards written by several Ray worker processes


def test_ray_rerun_skips_finished_shards_redoes_cut_off_ones_and_refuses_another_input(
        tmp_path: Path, nested, ray_session, capsys) -> None:
    root, _ = nested
    dest = tmp_path / "out"
    shard_source(str(root), str(dest), shard_size=30, labels="none")
    finished = _outputs(dest)
    # a kill leaves: a shard whose index part landed but not the shard, one with neither, a writer's temp file
    (dest / "shard-000003.tar").unlink()
    (dest / "shard-000006.tar").unlink()
    (dest / "_index" / "shard-000006.parquet").unlink()
    (dest / "index.parquet").unlink()
    (dest / "shard-000006.tar.0123456789ab.tmp").write_bytes(b"half a shard")
    capsys.readouterr()
    report = shard_source(str(root), str(dest), shard_size=30, labels="none")
    assert "(2 written now)" in capsys.readouterr().out
    assert _summary(dest)["this_run"]["ran"] == "ray"
    assert _outputs(dest) == finished and report.samples == 240
    assert not list(dest.rglob("*.tmp"))
    (root / "2023" / "new.png").write_bytes((root / "top00000.png").read_bytes())
    with pytest.raises(InputError, match="different input"):
        shard_source(str(root), str(dest), shard_size=30, labels="none")
    with pytest.raises(InputError, match="different input"):  # other labels: other shards
        shard_source(str(root), str(dest), shard_size=30, labels="folder")


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_killed_driver_of_a_ray_shard_job_resumes_to_the_same_shards(tmp_path: Path, mnist_digits,
                                                                     ray_session) -> None:
    """The driver of a job on a running cluster is killed mid-way; its tasks may outlive it for a moment
    (they write whole shards under their own temp names). A re-run completes the same shards."""
    images, _ = mnist_digits
    src = tmp_path / "photos"
    write_nested_tree(src, images, 1500, depth=2)
    reference = tmp_path / "reference"
    shard_source(str(src), str(reference), shard_size=25, labels="none", workers=0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "shard", str(src), str(tmp_path / "killed"), "--shard-size", "25",
           "--address", _gcs_address(), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # the job's own progress lines, not a timer, say when it is mid-way
        if "shards written" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed: enlarge the input"
    done_at_kill = len(list((tmp_path / "killed").glob("shard-*.tar")))
    assert 1 <= done_at_kill < 60 and not (tmp_path / "killed" / "index.parquet").exists()

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    written_now = int(rerun.stdout.rsplit("(", 1)[1].split(" written now")[0])
    assert 1 <= written_now <= 60 - done_at_kill  # finished shards kept (tasks that outlived the kill may add some)
    assert _outputs(tmp_path / "killed") == _outputs(reference)
    assert not list((tmp_path / "killed").rglob("*.tmp"))


TWO_NODE_SCRIPT = r"""
import json, sys
from ray.cluster_utils import Cluster
from pipelines.cli import main

# two Ray nodes on one host, one CPU each: a second write task has to run on the other node
import socket

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

# ports of our own: Ray's fixed defaults (dashboard agent, metrics) may still be held by a Ray that an earlier
# test's killed driver left behind, and a node that cannot bind them dies
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "object_store_memory": 100 * 1024**2, "include_dashboard": False,
    "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
    "runtime_env_agent_port": free_port()})
cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2, metrics_export_port=free_port(),
                 runtime_env_agent_port=free_port())
cluster.wait_for_nodes()
rc = main(["shard", sys.argv[1], sys.argv[2], "--shard-size", "20", "--address", cluster.address])
import ray
ray.shutdown()
cluster.shutdown()
sys.exit(rc)
"""


@pytest.mark.slow
def test_shard_tasks_run_on_both_nodes_of_a_two_node_cluster(tmp_path: Path, nested) -> None:
    root, _ = nested
    shard_source(str(root), str(tmp_path / "reference"), shard_size=20, labels="none", workers=0)
    proc = subprocess.run([sys.executable, "-c", TWO_NODE_SCRIPT, str(root), str(tmp_path / "two_nodes")], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _summary(tmp_path / "two_nodes")["this_run"]
    assert run["ran"] == "ray" and run["nodes"] == 2 and run["write_tasks"] == 12
    assert _outputs(tmp_path / "two_nodes") == _outputs(tmp_path / "reference")
