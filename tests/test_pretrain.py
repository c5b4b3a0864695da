"""Pretraining through Ray Train's TorchTrainer: runs, checkpoints, resumes, loads safely."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.errors import InputError
from pipelines.config import load_config
from pipelines.monitor import MonitorSets
from pipelines.pretrain import load_backbone, pretrain


def small_config(run_dir: Path, epochs: int, workers: int = 0):
    return load_config(None, [
        f"run_dir={run_dir}", f"train.num_workers={workers}", f"train.epochs={epochs}", "train.batch_size=64",
        "train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "train.cpus_per_worker=1.0",
    ])


@pytest.fixture(scope="module")
def digits_dataset(ray_session, mnist_digits):
    images, labels = mnist_digits
    rows = [{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(256)]
    return ray_session.data.from_items(rows)


@pytest.fixture(scope="module")
def heldout_dataset(ray_session, mnist_digits):
    images, labels = mnist_digits
    return ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(4000, 4200)])


def test_in_process_training_checkpoints_and_resumes(digits_dataset, heldout_dataset, tmp_path: Path) -> None:
    monitor = MonitorSets(bank=digits_dataset, queries=heldout_dataset)
    first = pretrain(small_config(tmp_path, epochs=2), digits_dataset, tmp_path, monitor=monitor)
    assert [h["epoch"] for h in first.history] == [1, 2]
    # the online kNN monitor ran on the held-out digits: a real accuracy, far above chance (0.1)
    assert all(0.3 < h["knn_top1"] <= 1.0 for h in first.history)
    assert all(np.isfinite(h["loss"]) for h in first.history)
    assert first.history[-1]["step"] == 2 * (256 // 64)

    # same run directory, more epochs: continues from epoch 2 instead of starting over
    second = pretrain(small_config(tmp_path, epochs=3), digits_dataset, tmp_path, monitor=monitor)
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[:2] == first.history
    assert second.history[-1]["step"] == 3 * (256 // 64)

    backbone = load_backbone(small_config(tmp_path, epochs=3), second.checkpoint_path)
    out = backbone(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 32)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/sslpipe_pwned"),))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = Path("/tmp/sslpipe_pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"method": _Payload()}))
    with pytest.raises(InputError, match="not a loadable sslpipe checkpoint"):
        load_backbone(small_config(tmp_path, epochs=1), evil)
    assert not marker.exists()


def test_lars_and_gradient_accumulation_train(digits_dataset, tmp_path: Path) -> None:
    cfg = load_config(None, [
        f"run_dir={tmp_path}", "train.num_workers=0", "train.epochs=1", "train.batch_size=64", "train.warmup_epochs=0",
        "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16", "train.optimizer=lars", "train.lr=0.3",
        "train.grad_accum_steps=2", "train.knn_monitor_every=0",
    ])
    result = pretrain(cfg, digits_dataset, tmp_path)
    assert result.history[-1]["step"] == 256 // 64
    assert np.isfinite(result.history[-1]["loss"])


def test_lars_step_follows_the_trust_ratio() -> None:
    from ssl_models.optim import LARS, lars_param_groups

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer(torch.randn(5, 4)).pow(2).sum().backward()
    g_w, g_b = layer.weight.grad.clone(), layer.bias.grad.clone()
    opt = LARS(lars_param_groups(layer), lr=0.5, weight_decay=0.01, trust_coefficient=0.001)
    opt.step()
    g = g_w + 0.01 * w0
    trust = 0.001 * w0.norm() / (g.norm() + 1e-8)
    assert torch.allclose(layer.weight, w0 - 0.5 * trust * g, atol=1e-6)
    assert torch.allclose(layer.bias, b0 - 0.5 * g_b, atol=1e-6)  # biases: plain SGD, no decay, no trust ratio




def test_compiled_backbone_trains_like_eager_and_checkpoints_stay_eager_compatible(
        digits_dataset, heldout_dataset, tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    eager = pretrain(small_config(tmp_path / "eager", epochs=1), digits_dataset, tmp_path / "eager",
                     monitor=MonitorSets(bank=digits_dataset, queries=heldout_dataset))
    torch._dynamo.reset()
    counters.clear()
    cfg = small_config(tmp_path / "compiled", epochs=1)
    cfg.train.compile = True
    compiled = pretrain(cfg, digits_dataset, tmp_path / "compiled",
                        monitor=MonitorSets(bank=digits_dataset, queries=heldout_dataset))
    # the training forward was compiled once; the kNN monitor's eval-mode passes ran eagerly, not recompiled
    assert counters["stats"]["unique_graphs"] == 1
    assert compiled.history[-1]["step"] == eager.history[-1]["step"] == 256 // 64
    # same seed, same data, same maths: only floating-point reassociation separates the two runs
    assert compiled.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=1e-3)
    assert compiled.history[-1]["knn_top1"] == pytest.approx(eager.history[-1]["knn_top1"], abs=0.02)
    # the checkpoint has the eager module's keys: an eager run resumes it, and export loads it
    resumed = pretrain(small_config(tmp_path / "compiled", epochs=2), digits_dataset, tmp_path / "compiled",
                       monitor=MonitorSets(bank=digits_dataset, queries=heldout_dataset))
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    backbone = load_backbone(small_config(tmp_path / "compiled", epochs=2), resumed.checkpoint_path)
    assert backbone(torch.zeros(2, 1, 28, 28)).shape == (2, 32)


def test_lines_from_a_ray_train_worker_reach_its_log_once(ray_session, tmp_path: Path) -> None:
    """Ray Train V2's print patch doubles every ``print`` in a worker (logger + tee); ``say`` writes once."""
    import uuid

    from ray._private import worker as ray_worker
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    marker = uuid.uuid4().hex

    def train_fn(_config) -> None:
        from pipelines.console import say

        say(f"{marker} via say")
        print(f"{marker} via print", flush=True)

    TorchTrainer(train_fn, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=TrainRunConfig(name="say", storage_path=str(tmp_path))).fit()
    logs = Path(ray_worker._global_node.get_logs_dir_path())
    text = "".join(f.read_text(errors="replace") for f in logs.glob("worker-*") if f.suffix in (".out", ".err"))
    assert text.count(f"{marker} via print") >= 1  # the scan does see what the worker wrote
    assert text.count(f"{marker} via say") == 1


def test_long_epochs_print_progress_within_the_epoch(digits_dataset, tmp_path: Path, capfd) -> None:
    cfg = small_config(tmp_path, epochs=1)
    cfg.train.knn_monitor_every = 0
    cfg.train.progress_every_s = 1e-9  # every step, so the test needs no long epoch
    pretrain(cfg, digits_dataset, tmp_path)
    lines = [line for line in capfd.readouterr().out.splitlines() if "epoch ETA" in line]
    # 4 steps: a line after each of the first 3; the 4th ends the epoch and gets the epoch summary instead
    assert [line.split("step ")[1].split()[0] for line in lines] == ["1/4", "2/4", "3/4"]


def test_ray_train_workers_run_under_the_configured_malloc(digits_dataset, tmp_path: Path) -> None:
    """``train.allocator=auto`` reaches the Ray Train worker process itself (LD_PRELOAD at its start)."""
    from ray._private import worker as ray_worker

    from pipelines.allocator import resolve_allocator

    expected = resolve_allocator("auto")
    if expected.library is None:
        pytest.skip("neither tcmalloc nor jemalloc is installed here (apt-get install libtcmalloc-minimal4)")
    logs = Path(ray_worker._global_node.get_logs_dir_path())

    def worker_logs() -> set[Path]:
        return {f for f in logs.glob("worker-*.*") if f.suffix in (".out", ".err")}

    # the Train worker is a new process (its runtime env differs from the pool's), so its log files are new;
    # counting only those keeps earlier tests' workers (and Ray's clean-up of their logs) out of the count
    before = worker_logs()
    pretrain(small_config(tmp_path, epochs=1, workers=1), digits_dataset, tmp_path)
    text = "".join(f.read_text(errors="replace") for f in worker_logs() - before)
    assert text.count(f"malloc: {expected.name}") == 1  # read from the worker's own memory map
    assert text.count("malloc: system") == 0


def test_bf16_autocast_trains_with_fp32_weights_and_says_so(digits_dataset, heldout_dataset, tmp_path: Path, capfd) -> None:
    cfg = small_config(tmp_path, epochs=1)
    cfg.train.precision = "bf16"
    result = pretrain(cfg, digits_dataset, tmp_path, monitor=MonitorSets(bank=digits_dataset, queries=heldout_dataset))
    assert "1 worker(s) on 1 node(s), cpu, bf16" in capfd.readouterr().out
    assert np.isfinite(result.history[-1]["loss"])
    assert 0.3 < result.history[-1]["knn_top1"] <= 1.0  # bf16 features still separate the digits
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
    floats = [t for t in state["method"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)  # autocast leaves the master weights fp32


def test_the_torchvision_reference_renderer_trains_in_the_same_loop(digits_dataset, tmp_path: Path) -> None:
    """augment.renderer=torchvision swaps only the view renderer: the loop, loss and checkpoint are the same."""
    cfg = small_config(tmp_path, epochs=1)
    cfg.augment.renderer = "torchvision"
    result = pretrain(cfg, digits_dataset, tmp_path)
    assert result.history[-1]["step"] >= 1 and np.isfinite(result.history[-1]["loss"])
    assert result.checkpoint_path is not None


def test_two_workers_each_train_on_every_class_even_from_class_sorted_shards(ray_session, mnist_digits, tmp_path: Path) -> None:
    """A class-sorted input (ImageFolder order) cut into two blocks would give each worker half the classes:
    the pool is shuffled before Ray Train splits it, so rank 0's pool holds all ten digits."""
    images, labels = mnist_digits
    order = np.argsort(labels[:256], kind="stable")
    rows = [{"image": images[i][:, :, None], "label": int(labels[i])} for i in order]
    sorted_ds = ray_session.data.from_items(rows, override_num_blocks=2)
    first_block_classes = {r["label"] for r in rows[:128]}
    assert len(first_block_classes) < 10  # the split this guards against really is class-skewed
    result = pretrain(small_config(tmp_path, epochs=1, workers=2), sorted_ds, tmp_path)
    assert result.history[0]["pool_classes"] == 10
    assert result.history[0]["active_samples"] == 256  # every image in exactly one worker's pool
