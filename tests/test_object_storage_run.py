"""``sslpipe run`` with its source and run directory in a bucket of a real S3-compatible server on
127.0.0.1 (moto's, IAM on): the whole chain, a driver killed mid-training and ``--resume`` from the
bucket; bad buckets refused in one line before anything is written; in-process training
checkpointing to the bucket and resuming from it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import storage
from pipelines.cli import main as cli_main
from pipelines.config import load_config
from tests.ingest.helpers import write_digit_folder
from tests.object_store import BUCKET, MotoS3, moto_s3  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent
SMALL_TRAINING = ["train.time_budget_s=0", "train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32",
                  "method.proj_dim=16", "train.batch_size=64", "train.knn_monitor_every=0", "eval.few_shot_tries=0",
                  "eval.robustness=false", "eval.linear_probe=false"]


def _shards_in_bucket(tmp_path: Path, mnist_digits, pool: int = 400, held_out: int = 200) -> tuple[str, str]:
    """Real MNIST digits written as shards into the bucket (what `sslpipe shard FOLDER s3://...` makes)."""
    from pipelines.sources import shard_source

    images, labels = mnist_digits
    write_digit_folder(tmp_path / "digits" / "pool", images, labels, pool)
    write_digit_folder(tmp_path / "digits" / "eval", images[4000:], labels[4000:], held_out)
    source, eval_source = f"s3://{BUCKET}/data/pool", f"s3://{BUCKET}/data/eval"
    shard_source(str(tmp_path / "digits" / "pool"), source, 100)
    shard_source(str(tmp_path / "digits" / "eval"), eval_source, 100)
    return source, eval_source


def _checkpoint_registered(s3: MotoS3, run_dir_key: str, proc: subprocess.Popen, deadline_s: float = 600) -> bool:
    """Poll the bucket until Ray Train has registered a checkpoint (its snapshot names one)."""
    snapshot = f"s3://{run_dir_key}/pretrain/checkpoint_manager_snapshot.json"
    end = time.time() + deadline_s
    while time.time() < end and proc.poll() is None:
        try:
            if storage.is_file(snapshot) and storage.read_json(snapshot).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.2)  # polling the bucket, not waiting for a result
    return False


@pytest.mark.slow
def test_run_in_a_bucket_survives_a_killed_driver_and_resumes_from_the_bucket(
        moto_s3: MotoS3, ray_session, mnist_digits, tmp_path: Path) -> None:  # noqa: F811
    """Source and run_dir in the bucket; one Ray Train worker (Train's own storage_path checkpoints, not the
    in-process shortcut). SIGKILL the driver once Train has a checkpoint in the bucket; ``--resume`` skips
    pool and curation, Ray Train resumes from the bucket's checkpoint and ends at the planned step count.
    Ray's workers started before the test set the AWS variables: everything reaches the bucket anyway."""
    source, eval_source = _shards_in_bucket(tmp_path, mnist_digits)
    run_dir = f"s3://{BUCKET}/runs/cluster"
    epochs = 6
    args = [sys.executable, "-m", "pipelines.cli", "run", str(REPO / "configs" / "demo.yaml"),
            f"data.source={source}", f"eval.bank_source={source}", f"eval.query_source={eval_source}",
            f"run_dir={run_dir}",
            "train.num_workers=1", f"train.epochs={epochs}", *SMALL_TRAINING,
            "--address", ray_session.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1"}
    work = tmp_path / "cwd"  # the driver's working directory: a uri must not become a local folder here
    work.mkdir()
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            registered = _checkpoint_registered(moto_s3, f"{BUCKET}/runs/cluster", first)
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait(timeout=60)
    assert registered, (tmp_path / "first.log").read_text()[-3000:]
    assert not storage.exists(f"{run_dir}/stages/pretrain.json"), "the driver finished before it was killed"
    curate_record = storage.read_bytes(f"{run_dir}/stages/curate.json")

    second = subprocess.run(args + ["--resume"], cwd=work, capture_output=True, text=True, timeout=900, env=env)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "pool: already done, skipping" in out and "curate: already done, skipping" in out
    assert storage.read_bytes(f"{run_dir}/stages/curate.json") == curate_record  # curation was not redone
    resumed = re.search(r"resumed from checkpoint at epoch (\d+), step (\d+)", out)
    assert resumed and 1 <= int(resumed.group(1)) < epochs, out[-3000:]

    history = [json.loads(line) for line in storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()]
    kept = json.loads(curate_record)["summary"]["kept"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert history[-1]["step"] == epochs * (kept // 64)  # one worker, global batch 64: the planned step count
    assert history[-1]["resumes"] >= 1

    objects = moto_s3.objects(f"{BUCKET}/runs/cluster")
    names = {o.split("runs/cluster/", 1)[1] for o in objects}
    for name in ("config.yaml", "stages/pool.json", "stages/curate.json", "stages/pretrain.json", "stages/evaluate.json",
                 "curated/manifest.parquet", "curated/summary.json", "checkpoint.pt", "metrics.jsonl", "report.html",
                 "report.json", "embedding.png", "pretrain/checkpoint_manager_snapshot.json"):
        assert name in names, (name, sorted(names))
    assert any(n.startswith("curated/shards/shard-") and n.endswith(".tar") for n in names)
    assert any(n.startswith("pretrain/checkpoint_") and n.endswith("/state.pt") for n in names)
    assert json.loads(storage.read_text(f"{run_dir}/stages/pretrain.json"))["checkpoint"] == f"{run_dir}/checkpoint.pt"

    local_copy = re.search(r"report: \S+/report\.html \(local copy: (\S+)\)", out)
    assert local_copy, out[-2000:]
    local = Path(local_copy.group(1))
    assert local.is_relative_to(os.environ["SSLPIPE_SCRATCH"])
    assert local.read_bytes() == storage.read_bytes(f"{run_dir}/report.html")
    assert "data:image/png;base64," in local.read_text()  # the plots came along (self-contained page)
    assert list(work.iterdir()) == []  # no local folder named "s3:" (or anything else) beside the driver

    # the driver's keys reached Ray Train's controller and workers inside the filesystem object, never as text
    secret = moto_s3.env["AWS_SECRET_ACCESS_KEY"]
    from ray._private.worker import _global_node

    texts = [out, (tmp_path / "first.log").read_text(), local.read_text()]
    texts += [storage.read_bytes(f"s3://{o}").decode("latin-1") for o in objects]
    logs = Path(_global_node.get_session_dir_path()) / "logs"
    texts += [p.read_bytes().decode("latin-1") for p in logs.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert not [t for t in texts if secret in t]


def _bad_input_cases(s3: MotoS3) -> dict[str, tuple[dict[str, str | None], dict[str, str], str, tuple[str, ...]]]:
    """case -> (environment changes, config overrides, uri the message must name, words of the fix)."""
    good_source, good_eval = f"s3://{BUCKET}/data/pool", f"s3://{BUCKET}/data/eval"
    no_keys = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    return {
        "missing_credentials": (no_keys, {}, good_source, ("no credentials found", "AWS_ACCESS_KEY_ID")),
        "access_denied": (s3.denied_env, {}, good_source, ("access denied", "permission")),
        "missing_bucket": ({}, {"data.source": "s3://no-such-bucket/pool"}, "s3://no-such-bucket/pool",
                           ("does not exist", "bucket name")),
        "empty_prefix": ({}, {"data.source": f"s3://{BUCKET}/nothing-here"}, f"s3://{BUCKET}/nothing-here",
                         ("no .tar/.parquet shards", "nothing is stored", "sslpipe shard")),
        "images_not_shards": ({}, {"data.source": f"s3://{BUCKET}/raw-images"}, f"s3://{BUCKET}/raw-images",
                              ("no .tar/.parquet shards", "sslpipe shard")),
        "eval_source_empty": ({}, {"eval.bank_source": good_source, "eval.query_source": f"s3://{BUCKET}/nothing-here"},
                              f"s3://{BUCKET}/nothing-here", ("eval.query_source", "sslpipe shard")),
        "run_dir_missing_bucket": ({}, {"run_dir": "s3://no-such-bucket/runs/x"}, "s3://no-such-bucket/runs/x",
                                   ("run_dir", "does not exist")),
        "run_dir_read_only": (s3.read_only_env, {}, f"s3://{BUCKET}/runs/bad", ("cannot write to", "access denied")),
    } | {"_good": ({}, {"data.source": good_source, "eval.bank_source": good_source, "eval.query_source": good_eval,
                        "run_dir": f"s3://{BUCKET}/runs/bad"}, "", ())}


@pytest.mark.parametrize("case", ["missing_credentials", "access_denied", "missing_bucket", "empty_prefix",
                                  "images_not_shards", "eval_source_empty", "run_dir_missing_bucket",
                                  "run_dir_read_only"])
def test_bad_buckets_fail_in_one_line_before_anything_is_written(
        case: str, moto_s3: MotoS3, mnist_digits, tmp_path: Path, monkeypatch, capfd) -> None:  # noqa: F811
    images, labels = mnist_digits
    _shards_in_bucket(tmp_path, mnist_digits, pool=20, held_out=10)
    storage.write_bytes(f"s3://{BUCKET}/raw-images/d0/0001.png", (tmp_path / "digits" / "pool").joinpath(
        f"d{labels[0]}", "00000.png").read_bytes())
    before = moto_s3.objects()
    cases = _bad_input_cases(moto_s3)
    env_change, overrides, named_uri, fix_words = cases[case]
    settings = {**cases["_good"][1], **overrides}
    secret = moto_s3.env["AWS_SECRET_ACCESS_KEY"]
    for name, value in env_change.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    local_before = sorted(p.name for p in tmp_path.iterdir())
    capfd.readouterr()

    rc = cli_main(["run", str(REPO / "configs" / "demo.yaml"), *(f"{k}={v}" for k, v in settings.items()),
                   "train.num_workers=0"])
    out, err = capfd.readouterr()
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslpipe: error: "), err
    assert named_uri in lines[0], lines[0]
    for word in fix_words:
        assert word in lines[0], (word, lines[0])
    for key in (secret, moto_s3.denied_env["AWS_SECRET_ACCESS_KEY"], moto_s3.read_only_env["AWS_SECRET_ACCESS_KEY"]):
        assert key not in out + err
    assert "[run] =====" not in out  # no stage started
    assert moto_s3.objects() == before  # nothing written to the bucket (the write probe left nothing either)
    assert sorted(p.name for p in tmp_path.iterdir()) == local_before  # no local "s3:" folder
    assert not Path(os.environ["SSLPIPE_SCRATCH"]).exists()  # no local copies either


def test_in_process_training_checkpoints_to_a_bucket_and_resumes_from_it(
        moto_s3: MotoS3, ray_session, mnist_digits, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """``train.num_workers=0`` (Train in this process keeps no checkpoints of its own): our checkpoints go to
    the bucket, and a second call with more epochs continues from the bucket's latest one."""
    from pipelines.pretrain import load_backbone, pretrain

    images, labels = mnist_digits
    dataset = ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])}
                                           for i in range(256)])
    run_dir = f"s3://{BUCKET}/runs/in-process"
    monkeypatch.chdir(tmp_path)

    def config(epochs: int):
        return load_config(None, [f"run_dir={run_dir}", "train.num_workers=0", f"train.epochs={epochs}",
                                  *SMALL_TRAINING])

    first = pretrain(config(1), dataset, run_dir)
    assert first.checkpoint_path == f"{run_dir}/checkpoint.pt"
    assert storage.is_file(f"{run_dir}/pretrain/local_checkpoints/epoch_000001/state.pt")
    second = pretrain(config(3), dataset, run_dir)
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[0] == first.history[0]  # epoch 1 came from the bucket's checkpoint, not re-trained
    assert second.history[-1]["resumes"] == 1 and second.history[-1]["step"] == 3 * (256 // 64)
    kept = storage.list_dir(f"{run_dir}/pretrain/local_checkpoints")
    assert kept == ["epoch_000002", "epoch_000003"]  # older ones pruned in the bucket too
    # live tracking lands in the bucket too: metrics.jsonl rewritten per epoch, TensorBoard's files copied up
    lines = storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert any(name.startswith("events.out.tfevents") for name in storage.list_dir(f"{run_dir}/tb"))
    backbone = load_backbone(config(3), second.checkpoint_path)  # loads straight from the bucket
    assert backbone is not None
    assert list(tmp_path.iterdir()) == []  # nothing local named after the uri


def test_a_sweep_refuses_a_bucket_run_dir_instead_of_making_a_local_folder(tmp_path: Path, monkeypatch) -> None:
    """Sweeps keep trial state on local disk: a bucket run_dir is one clear error, not a local ``s3:`` folder."""
    from storage import InputError
    from pipelines.sweep import load_search_space, run_sweep

    monkeypatch.chdir(tmp_path)
    spec = load_search_space(REPO / "configs" / "sweep_demo.yaml", [f"run_dir=s3://{BUCKET}/runs/sweep"])
    with pytest.raises(InputError, match="run_dir must be a local path.*storage_path"):
        run_sweep(spec.base, spec)
    assert list(tmp_path.iterdir()) == []


TWO_NODE_SCRIPT = r"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import socket

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

work, run_dir, source, eval_source = sys.argv[1:5]
# ports of our own: Ray's fixed defaults (dashboard agent, metrics) may still be held by the Ray that the
# killed-driver test left behind, and a node that cannot bind them dies
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 3, "object_store_memory": 200 * 1024**2, "include_dashboard": False,
    "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
    "runtime_env_agent_port": free_port()})
# the second node: its own mount namespace with an empty /tmp (the head's session, the test's files and the
# driver's scratch are all under /tmp), and none of the driver's storage settings or keys. So the checkout and
# its Python must not live under /tmp themselves: the node could not start `ray` there.
node_env = {k: v for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("SSLPIPE_SCRATCH", "RAY_DATA_LOGGING_CONFIG")}
ray_cli = str(Path(sys.executable).parent / "ray")
second = subprocess.Popen(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c",
     f"mount -t tmpfs tmpfs /tmp && exec {ray_cli} start --address={cluster.address} --num-cpus=3 "
     f"--object-store-memory=209715200 --dashboard-agent-listen-port={free_port()} "
     f"--dashboard-agent-grpc-port={free_port()} --metrics-export-port={free_port()} "
     f"--runtime-env-agent-port={free_port()} --block"],
    env=node_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    ray.init(address=cluster.address, logging_level="WARNING")
    deadline = time.time() + 300
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline and second.poll() is None:
        time.sleep(0.5)  # polling for the node to register
    head = ray.get_runtime_context().get_node_id()
    other = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]
    probe = ray.remote(lambda p: (os.path.exists(p), os.environ.get("AWS_SECRET_ACCESS_KEY")))
    sees = ray.get(probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other[0], soft=False)).remote(work))

    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    cfg = load_config(sys.argv[5], [f"data.source={source}", f"eval.bank_source={source}",
                                    f"eval.query_source={eval_source}", f"run_dir={run_dir}",
                                    "train.num_workers=2", "train.cpus_per_worker=2", "train.threads_per_worker=1",
                                    *json.loads(sys.argv[6])])
    run_pipeline(cfg)
    print(json.dumps({"nodes": sum(n["Alive"] for n in ray.nodes()), "second_sees_work": sees[0],
                      "second_has_key": sees[1] is not None}))
finally:
    ray.shutdown()
    os.killpg(second.pid, signal.SIGTERM)  # our own child's process group: the second node
    second.wait(timeout=60)
    cluster.shutdown()
"""


@pytest.mark.slow
def test_two_nodes_that_share_only_loopback_and_the_bucket(moto_s3: MotoS3, mnist_digits, tmp_path: Path) -> None:  # noqa: F811
    """Two Ray nodes on one host, the second in its own mount namespace (private /tmp, no AWS variables):
    as separate machines would, they share nothing but loopback and the bucket. A full run with source and
    run_dir in the bucket trains one DDP worker on each node and keeps everything in the bucket."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --mount is not permitted here (needs CAP_SYS_ADMIN)")
    hidden = [str(p) for p in (REPO, Path(sys.executable)) if Path(p).resolve().is_relative_to("/tmp")]
    if hidden:
        pytest.skip(f"{hidden[0]} is under /tmp, which the second node's namespace replaces with an empty tmpfs")
    source, eval_source = _shards_in_bucket(tmp_path, mnist_digits, pool=256, held_out=100)
    run_dir = f"s3://{BUCKET}/runs/two-nodes"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", TWO_NODE_SCRIPT, str(tmp_path), run_dir, source, eval_source,
         str(REPO / "configs" / "demo.yaml"), json.dumps(["train.epochs=2", *SMALL_TRAINING])],
        cwd=work, capture_output=True, text=True, timeout=1200,
        # not the quiet console's Ray Data logging file that an earlier in-process CLI test set for this
        # process: it lies under the host's /tmp, which the second node cannot see
        env={**{k: v for k, v in os.environ.items() if k != "RAY_DATA_LOGGING_CONFIG"},
             "PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {"nodes": 2, "second_sees_work": False, "second_has_key": False}  # really apart
    history = [json.loads(line) for line in storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()]
    assert history[-1]["nodes"] == 2 and history[-1]["epoch"] == 2  # one DDP worker on each node
    for name in ("stages/evaluate.json", "checkpoint.pt", "report.html", "curated/manifest.parquet"):
        assert storage.is_file(f"{run_dir}/{name}"), name
    assert list(work.iterdir()) == []
