"""Real distributed training: DDP over gloo with 2 workers, a killed worker, and two Ray nodes on one host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMALL = [
    "train.batch_size=64", "train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32",
    "method.proj_dim=16", "train.knn_monitor_every=0",
]


def _digits_dataset(ray_mod, n: int):
    from pipelines.sources import load_mnist_digits

    images, labels = load_mnist_digits()
    return ray_mod.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(n)])


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int], deadline_s: float = 240) -> None:
    """Wait until Ray Train has persisted checkpoints, then SIGKILL one training worker process."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # other Ray instances may run on this machine
    end = time.time() + deadline_s
    # the controller writes its snapshot once it has *registered* a checkpoint (a directory on disk is not enough)
    snapshot = run_dir / "pretrain" / "checkpoint_manager_snapshot.json"
    while time.time() < end:
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    while time.time() < end:
        alive = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        if alive:
            os.kill(alive[-1].pid, signal.SIGKILL)
            killed.append(alive[-1].pid)
            return
        time.sleep(0.2)


def _digit_pool(root: Path, n: int, shard_size: int = 100):
    """The first ``n`` digits as tar shards (PNG), counted: the input of the stream feed."""
    from curation.planting import encode_png
    from curation.shards import Sample, write_shard
    from pipelines.feed import ShardPool
    from pipelines.sources import load_mnist_digits

    images, labels = load_mnist_digits()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, n, shard_size):
        path = root / f"shard-{start // shard_size:06d}.tar"
        write_shard([Sample(f"d{i:05d}", encode_png(images[i]), "png", int(labels[i]))
                     for i in range(start, min(n, start + shard_size))], path)
        paths.append(str(path))
    return ShardPool.count(paths)


@pytest.mark.slow
# streamed only (the harder case: a replaced worker must rejoin its part of the epoch's stream); the memory feed's
# fault path is the killed-driver test in tests/test_faults.py
@pytest.mark.parametrize("feed", ["stream"])
def test_killed_worker_is_replaced_and_training_finishes_all_steps(ray_session, tmp_path: Path, feed: str) -> None:
    from pipelines.config import load_config
    from pipelines.pretrain import pretrain

    epochs, n = 8, 512
    cfg = load_config(None, [f"run_dir={tmp_path}", "train.num_workers=2", f"train.epochs={epochs}",
                             "train.max_failures=2", f"data.cache={feed}", *SMALL])
    data = _digits_dataset(ray_session, n) if feed == "memory" else _digit_pool(tmp_path / "pool", n)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(tmp_path, killed), daemon=True)
    killer.start()
    result = pretrain(cfg, data, tmp_path)
    killer.join(timeout=5)

    assert killed, "the test never killed a worker"
    steps_per_epoch = (n // 2) // (64 // 2)
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert result.history[-1]["step"] == epochs * steps_per_epoch  # the planned number of optimizer steps
    assert result.history[-1]["resumes"] >= 1  # it really restarted from a checkpoint


MULTINODE_SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "object_store_memory": 200 * 1024**2})
cluster.add_node(num_cpus=3, object_store_memory=200 * 1024**2)
ray.init(address=cluster.address, logging_level="WARNING")
cluster.wait_for_nodes()
ray.data.DataContext.get_current().enable_progress_bars = False  # Train propagates it to the workers

from pipelines.config import load_config
from pipelines.pretrain import pretrain
from pipelines.sources import load_mnist_digits

from pathlib import Path
from tests.test_distributed import _digit_pool

images, labels = load_mnist_digits()
ds = ray.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(256)])
pool = None
out = {"cluster_nodes": len(ray.nodes()), "runs": []}
for k, overrides in enumerate(json.loads(sys.argv[2])):  # several jobs on one cluster: it starts once
    # 2 CPUs per worker on 3-CPU nodes: one worker per node, one CPU left on each for Ray Data
    cfg = load_config(None, [f"run_dir={sys.argv[1]}/run{k}", "train.num_workers=2", "train.cpus_per_worker=2",
                             "train.threads_per_worker=1", *overrides])
    if cfg.data.cache == "stream":  # the same 256 digits as shards, streamed
        pool = pool or _digit_pool(Path(sys.argv[1]) / "pool", 256, shard_size=64)
    result = pretrain(cfg, pool if cfg.data.cache == "stream" else ds, f"{sys.argv[1]}/run{k}")
    out["runs"].append({"nodes": result.history[-1]["nodes"], "history": result.history, "run_dir": f"{sys.argv[1]}/run{k}"})
print(json.dumps(out))
ray.shutdown()
cluster.shutdown()
"""


#: one DDP job with dynamic cluster-balance pruning (each worker prunes its own shard); both tests below read it,
#: so the cluster and the job start once
MULTINODE_RUNS = [
    ["train.epochs=3", "dynamic.policy=cluster_balance", "dynamic.warmup_epochs=1", "dynamic.every_epochs=1",
     "dynamic.keep_fraction=0.5", *SMALL],
    # the same job streamed: each worker reads its own part of every epoch, pruning rounds are Ray Data jobs
    ["train.epochs=3", "dynamic.policy=cluster_balance", "dynamic.warmup_epochs=1", "dynamic.every_epochs=1",
     "dynamic.keep_fraction=0.5", "data.cache=stream", "train.record_seen_keys=true", "dynamic.levels=[8,2]", *SMALL],
]


@pytest.fixture(scope="module")
def two_node_runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("two_node")
    proc = subprocess.run(
        [sys.executable, "-c", MULTINODE_SCRIPT, str(tmp), json.dumps(MULTINODE_RUNS)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,  # two jobs (memory, stream) on one cluster
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cluster_nodes"] == 2
    return out


@pytest.mark.slow
def test_ddp_trainer_on_a_two_node_cluster(two_node_runs: dict) -> None:
    run = two_node_runs["runs"][0]
    assert run["nodes"] == 2  # one training worker on each node
    # 1 full epoch of 4 steps, then pruned epochs of 2 steps up to the planned 3 x 4 steps
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3, 4, 5]
    assert [h["step"] for h in run["history"]] == [4, 6, 8, 10, 12]


@pytest.mark.slow
def test_dynamic_pruning_on_a_two_node_cluster(two_node_runs: dict) -> None:
    """Each worker re-embeds and prunes its own shard; equal shards keep equal kept sizes, so DDP stays in step
    and the run reaches the unpruned step budget."""
    run = two_node_runs["runs"][0]
    history = run["history"]
    assert run["nodes"] == 2
    steps_per_epoch = (256 // 2) // 32
    assert history[-1]["step"] == 3 * steps_per_epoch
    assert history[0]["active_samples"] == 256
    assert all(h["active_samples"] == 128 for h in history[1:])  # 64 kept on each of the 2 workers
    rounds = [h for h in history if "prune_round_seconds" in h]
    assert len(rounds) == len(history) - 1  # a round before every epoch after the warm-up
    assert all(0 < h["prune_cluster_entropy_after"] <= 1 for h in rounds)


@pytest.mark.slow
def test_streaming_and_stream_pruning_on_a_two_node_cluster(two_node_runs: dict) -> None:
    """Stream feed on two Ray nodes: one worker per node, each reading its own part of every epoch; the
    pruning rounds run as Ray Data jobs and every later epoch reads exactly the keep-list, split between
    the nodes."""
    import pyarrow.parquet as pq

    run = two_node_runs["runs"][1]
    history, run_dir = run["history"], Path(run["run_dir"])
    assert run["nodes"] == 2
    assert [h["step"] for h in history] == [4, 6, 8, 10, 12]  # the unpruned budget, 3 x 256 // 64
    assert [h["active_samples"] for h in history] == [256, 128, 128, 128, 128]
    for epoch in range(1, 6):
        per_rank = [pq.read_table(run_dir / "seen_keys" / f"epoch_{epoch:06d}_rank_{r}.parquet").column("key")
                    .to_pylist() for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) and not set(per_rank[0]) & set(per_rank[1])  # disjoint halves
        if epoch > 1:
            keep = pq.read_table(run_dir / "keep_lists" / f"epoch_{epoch:06d}.parquet").column("key").to_pylist()
            assert len(keep) == 128 and sorted(per_rank[0] + per_rank[1]) == sorted(keep)
    rounds = [h for h in history if "prune_round_seconds" in h]
    assert len(rounds) == 4 and all(h["prune_kept"] == 128 for h in rounds)
