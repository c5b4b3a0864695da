"""Issue #34: where sslpipe's per-step training gain goes relative to LightlySSL, one difference at a time.

Runs ``bench/quality.py``'s two systems (its own functions: ``run_lightly``, ``run_sslpipe``, the same recipe,
images and kNN) once per (variant, seed), one run at a time, and appends each result to a JSON-lines file as
soon as it exists. A re-run skips what the file already holds, so a killed session loses at most the run in
flight. Each variant switches one of the known differences (``quality.KNOWN_DIFFERENCES``) to LightlySSL's side:

- ``baseline``: sslpipe as shipped (``configs/cifar10.yaml`` under the bench's recipe)
- ``torch_init``: LightlySSL's initialisation, ``backbone.conv_init=torch_default``
- ``tv_views``: per-image torchvision views, ``augment.renderer=torchvision``
- ``one_worker``: one Ray Train worker, so BatchNorm sees the whole batch of 256 as in LightlySSL's loop
- ``imagenet_norm``: ImageNet mean/std (``data.mean`` / ``data.std``) as LightlySSL's transform
- ``ntxent_fp32`` / ``ntxent_bf16``: NT-Xent's similarity matmul forced to fp32 / bf16 whatever
  ``ssl_models/losses/ntxent.py`` does on this branch (bf16 runs only; in fp32 both equal the baseline).
  How: a Ray ``worker_process_setup_hook`` (``_force_ntxent_in_this_process``) replaces
  ``SimCLR.pair_loss`` in every worker process by ``forced_nt_xent``, the same NT-Xent with the two
  normalised projection batches cast to the given dtype for the similarity matmul and every other op in
  fp32 outside autocast; each process that uses it writes a marker file, and the run is refused
  unless every training worker did
- ``all_lightly``: all of the above on LightlySSL's side at once (the loss follows the run's precision,
  bf16 similarities under bf16 as LightlySSL's autocast loss computes them)
- ``lightly``: LightlySSL's own loop (``quality.run_lightly``)

Every record holds kNN top-1 at the end and of the untrained backbone (same seed), the gain in points,
the loss, speed, the load average and the host. sslpipe's untrained-backbone kNN depends only on the seed
and the backbone's initialisation and normalisation, so it is computed once per such key and reused.

    SSLPIPE_CIFAR10=/data/cifar10 nice -n 15 python bench/ablation.py --train-images 10240 --seeds 0,1 \\
        --precision bf16 --variants lightly,baseline,torch_init,tv_views,one_worker,imagenet_norm,ntxent_fp32,all_lightly
    python bench/ablation.py --results bench/results/ablation-40-bf16.jsonl --table    # the table so far
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NTXENT_ENV = "SSLPIPE_BENCH_NTXENT"  # fp32 | bf16: the similarity dtype a worker's forced NT-Xent uses
MARKER_ENV = "SSLPIPE_BENCH_NTXENT_MARKERS"  # folder where each patched process that trains says so
IMAGENET_SETS = ("data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which system, and what is switched to LightlySSL's side."""

    system: str = "sslpipe"
    sets: tuple[str, ...] = ()
    workers: int = 2
    #: NT-Xent similarity dtype forced in the workers: None (as shipped), fp32, bf16, or "precision" (the run's)
    ntxent: str | None = None
    note: str = ""


VARIANTS: dict[str, Variant] = {
    "lightly": Variant(system="lightly", note="LightlySSL's own loop"),
    "baseline": Variant(note="sslpipe as shipped"),
    "torch_init": Variant(sets=("backbone.conv_init=torch_default",), note="LightlySSL's init"),
    "tv_views": Variant(sets=("augment.renderer=torchvision",), note="per-image torchvision views"),
    "one_worker": Variant(workers=1, note="whole-batch BatchNorm (one worker)"),
    "imagenet_norm": Variant(sets=IMAGENET_SETS, note="ImageNet mean/std"),
    "ntxent_fp32": Variant(ntxent="fp32", note="NT-Xent similarities in fp32"),
    "ntxent_bf16": Variant(ntxent="bf16", note="NT-Xent similarities in bf16"),
    "all_lightly": Variant(sets=("backbone.conv_init=torch_default", "augment.renderer=torchvision", *IMAGENET_SETS),
                           workers=1, ntxent="precision", note="all of the above on LightlySSL's side"),
}


def load_quality():
    """bench/quality.py as a module (bench/ is no package): its recipe, its runs, its kNN."""
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def quality_args(variant: Variant, seed: int, opts: argparse.Namespace) -> argparse.Namespace:
    """The namespace quality.py's ``run_lightly`` / ``run_sslpipe`` / ``sslpipe_config`` read, at its CLI defaults."""
    return argparse.Namespace(
        epochs=opts.epochs, train_images=opts.train_images, test_images=opts.test_images, batch=opts.batch,
        loader_workers=2, sslpipe_workers=variant.workers, seed=seed, precision=opts.precision, compile=False,
        sslpipe_set=list(variant.sets), init_knn=variant.system == "lightly", lightly_malloc="system",
        systems=variant.system, work_dir=None, cifar10=None,
    )


def ntxent_dtype(variant: Variant, precision: str) -> str | None:
    """The similarity dtype to force for this run, or None to leave the shipped loss alone."""
    if variant.ntxent == "precision":
        return "bf16" if precision == "bf16" else None
    return variant.ntxent


# --------------------------------------------------------------------------- NT-Xent with a chosen matmul dtype


def forced_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, sim_dtype: torch.dtype) -> torch.Tensor:
    """NT-Xent over the global batch (as ``ssl_models.losses.ntxent``) with the similarity matmul in ``sim_dtype``.

    Everything else (normalisation, temperature, masking, cross-entropy) runs in fp32 outside autocast. With
    bf16, the normalised rows are rounded to bf16 and the matmul's output too, which is what a bf16 autocast
    region does to ``a @ b.T`` (and, dividing by 0.5 being exact, to ``a @ b.T / 0.5``).
    """
    import torch.nn.functional as F

    from ssl_models.distributed import gather_with_grad, rank

    with torch.autocast(device_type=z1.device.type, enabled=False):
        n1, n2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        batch = n1.shape[0]
        local = torch.cat([n1, n2])
        all1, all2 = gather_with_grad(n1), gather_with_grad(n2)
        keys = torch.cat([all1, all2])
        total = all1.shape[0]
        logits = (local.to(sim_dtype) @ keys.to(sim_dtype).T).float() / temperature
        rows = torch.arange(batch, device=z1.device) + rank() * batch
        self_idx = torch.cat([rows, rows + total])
        pos_idx = torch.cat([rows + total, rows])
        logits = logits.index_put((torch.arange(2 * batch, device=z1.device), self_idx),
                                  torch.tensor(float("-inf"), device=z1.device))
        return F.cross_entropy(logits, pos_idx)


def _force_ntxent_in_this_process() -> None:
    """Ray worker setup hook: make SimCLR's loss ``forced_nt_xent`` with the dtype in ``$SSLPIPE_BENCH_NTXENT``.

    Self-contained (Ray pickles it by value when this file runs as ``__main__``): it imports what it needs.
    """
    import os as _os

    import torch as _torch

    mode = _os.environ.get("SSLPIPE_BENCH_NTXENT")
    if mode not in ("fp32", "bf16"):
        return
    from ssl_models.methods.simclr import SimCLR

    dtype = _torch.float32 if mode == "fp32" else _torch.bfloat16
    markers = _os.environ.get("SSLPIPE_BENCH_NTXENT_MARKERS")
    loss_fn = _FORCED_LOSS  # bound below; pickled with this function

    def pair_loss(self, z1, z2):
        if markers and not getattr(pair_loss, "said", False):
            pair_loss.said = True
            Path(markers, f"{_os.getpid()}.{mode}").write_text(mode)
        return loss_fn(z1, z2, self.temperature, dtype)

    SimCLR.pair_loss = pair_loss


_FORCED_LOSS = forced_nt_xent


@contextlib.contextmanager
def patched_ray_init(mode: str | None, markers: Path, attempts: int = 5) -> Iterator[None]:
    """``quality.run_sslpipe``'s local Ray, started with retries and, if ``mode``, the NT-Xent setup hook.

    Retries: on a loaded, niced 2-core host Ray's raylet can miss the 30 s it is given to register
    (a constant in ``ray._private.node``), and one such miss must not cost an hour-long queue.
    The hook: every Ray worker process started inside this block runs ``_force_ntxent_in_this_process``.
    """
    import ray

    import pipelines.ray_runtime as ray_runtime

    original = ray_runtime.init_local_ray
    extra: dict[str, Any] = {}
    if mode is not None:
        markers.mkdir(parents=True, exist_ok=True)
        if __name__ != "__main__":  # imported by path: Ray's workers cannot import this module, so ship the hook by value
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        extra["runtime_env"] = {"worker_process_setup_hook": _force_ntxent_in_this_process,
                                "env_vars": {NTXENT_ENV: mode, MARKER_ENV: str(markers)}}

    def init_with_retries(cfg, **overrides):
        for attempt in range(1, attempts + 1):
            try:
                return original(cfg, **extra, **overrides)
            except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a start-up time-out
                if "timed out during startup" not in str(exc) or attempt == attempts:
                    raise
                print(f"[ablation] Ray start-up timed out (attempt {attempt} of {attempts}); retrying", flush=True)
                ray.shutdown()
                time.sleep(10)

    ray_runtime.init_local_ray = init_with_retries  # run_sslpipe imports it from the module at call time
    try:
        yield
    finally:
        ray_runtime.init_local_ray = original


# --------------------------------------------------------------------------- records


def run_key(variant: str, seed: int, opts: argparse.Namespace) -> dict[str, Any]:
    """What makes two records the same measurement (a re-run skips a key already in the file)."""
    return {"variant": variant, "seed": seed, "train_images": opts.train_images, "test_images": opts.test_images,
            "epochs": opts.epochs, "batch": opts.batch, "precision": opts.precision}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line per finished run, flushed and fsynced: a killed session keeps every finished run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def has_record(records: list[dict[str, Any]], key: dict[str, Any], kind: str = "run") -> dict[str, Any] | None:
    return next((r for r in records if r.get("kind") == kind and all(r.get(k) == v for k, v in key.items())), None)


def host_info() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"host": socket.gethostname(), "cores": os.cpu_count(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "nice": os.nice(0), "commit": commit + ("+dirty" if dirty else ""), "torch": torch.__version__}


# --------------------------------------------------------------------------- runs


def init_key(cfg) -> str:
    """sslpipe's untrained backbone is a function of the seed, the backbone keys and the input normalisation."""
    blob = json.dumps({"seed": cfg.seed, "backbone": vars(cfg.backbone), "channels": cfg.data.channels,
                       "norm": cfg.data.normalization()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sslpipe_init_knn(quality, args, bank, queries, records, opts, results: Path) -> float:
    """kNN of sslpipe's untrained backbone for this config (cached in the results file by ``init_key``)."""
    from pipelines.eval_stage import embed
    from pipelines.models import build_method_from_config

    cfg = quality.sslpipe_config(Path(tempfile.gettempdir()) / "unused-run-dir", args)
    key = {"init_key": init_key(cfg), "train_images": opts.train_images, "test_images": opts.test_images}
    cached = has_record(records, key, kind="init")
    if cached is not None:
        return float(cached["knn_top1_at_init"])
    torch.set_num_threads(os.cpu_count() or 1)
    initial = build_method_from_config(cfg).backbone  # the same seeded function pretrain() builds its model with
    acc = quality.knn_top1(lambda x: embed(initial, x, cfg), bank, queries)[0]
    record = {"kind": "init", **key, "seed": cfg.seed, "conv_init": cfg.backbone.conv_init,
              "norm": cfg.data.normalization(), "knn_top1_at_init": acc}
    append_record(results, record)
    records.append(record)
    return acc


@torch.no_grad()
def calibrate_batchnorm(backbone: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Set every BatchNorm's running statistics to the exact mean and variance over ``batches``.

    An untrained network's running statistics are mean 0, variance 1, so in eval mode (the mode every kNN
    embeds in) its BatchNorms pass activations through unnormalised: not the function training starts
    from, where each BatchNorm normalises with the batch's own statistics. How far the two differ depends
    on the conv weights' scale. Calibrating the statistics on data gives the eval-mode network the
    function of the train-mode one.
    """
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches: the exact statistics, not an EMA
    backbone.train()
    for x in batches:
        backbone(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    backbone.eval()


def init_knn_both_ways(quality, name: str, seed: int, opts, bank, queries,
                       records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """kNN of the untrained backbone with its BatchNorms as built (running mean 0, variance 1) and calibrated
    on the first ``opts.calibration_images`` bank images in the evaluation view. sslpipe's as-built figure is
    taken from the results file's init record when it has one (the same build and embedding)."""
    import numpy as np

    variant = VARIANTS[name]
    args = quality_args(variant, seed, opts)
    torch.set_num_threads(os.cpu_count() or 1)
    calib = bank[0][: opts.calibration_images]
    if variant.system == "lightly":
        torch.manual_seed(seed)  # run_lightly seeds, then builds its backbone before any other draw
        backbone = quality.lightly_backbone()
        mean = torch.tensor(quality.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(quality.IMAGENET_STD).view(1, 3, 1, 1)

        def view(images: np.ndarray) -> torch.Tensor:
            return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

        @torch.no_grad()
        def embed(images: np.ndarray) -> np.ndarray:
            backbone.eval()
            return np.concatenate([backbone(view(images[s : s + 512])).flatten(start_dim=1).numpy()
                                   for s in range(0, len(images), 512)])
        key = {"system": "lightly", "seed": seed}
    else:
        from pipelines.eval_stage import embed as sslpipe_embed
        from pipelines.models import build_method_from_config, view_recipe
        from ssl_models.augment import normalize_batch

        cfg = quality.sslpipe_config(Path(tempfile.gettempdir()) / "unused-run-dir", args)
        backbone = build_method_from_config(cfg).backbone
        recipe = view_recipe(cfg)

        def view(images: np.ndarray) -> torch.Tensor:
            return normalize_batch(torch.from_numpy(images).permute(0, 3, 1, 2), recipe)

        def embed(images: np.ndarray) -> np.ndarray:
            return sslpipe_embed(backbone, images, cfg)
        key = {"system": "sslpipe", "seed": seed, "init_key": init_key(cfg), "conv_init": cfg.backbone.conv_init}
    cached = None
    if variant.system == "sslpipe" and records is not None:
        cached = has_record(records, {"init_key": key["init_key"], "train_images": opts.train_images,
                                      "test_images": opts.test_images}, kind="init")
    as_built = float(cached["knn_top1_at_init"]) if cached else quality.knn_top1(embed, bank, queries)[0]
    calibrate_batchnorm(backbone, [view(calib[s : s + opts.batch]) for s in range(0, len(calib), opts.batch)])
    calibrated = quality.knn_top1(embed, bank, queries)[0]
    return {"kind": "init_calibrated", **key, "train_images": opts.train_images, "test_images": opts.test_images,
            "calibration_images": len(calib), "knn_top1_at_init": as_built, "knn_top1_at_init_bn_calibrated": calibrated,
            "started": datetime.datetime.now().isoformat(timespec="seconds"), **host_info()}


def run_one(quality, name: str, seed: int, opts, root: Path, train_items, bank, queries, work: Path,
            records: list[dict[str, Any]], results: Path) -> dict[str, Any]:
    variant = VARIANTS[name]
    args = quality_args(variant, seed, opts)
    forced = ntxent_dtype(variant, opts.precision)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if variant.system == "lightly":
        out = quality.run_lightly(root, train_items, args, bank, queries)
        init_acc = out["knn_top1_at_init"]
    else:
        markers = work / f"ntxent-markers-{name}-{seed}"
        shutil.rmtree(markers, ignore_errors=True)
        with patched_ray_init(forced, markers):
            out = quality.run_sslpipe(root, work, args, bank, queries)
        if forced is not None:  # every training worker must have trained with the forced loss
            seen = sorted(p.name for p in markers.glob(f"*.{forced}"))
            if len(seen) < variant.workers:
                raise RuntimeError(f"{name}: NT-Xent forced to {forced} in {len(seen)} of {variant.workers} "
                                   f"training workers ({seen}); the setup hook did not reach them")
            out["ntxent_forced_in"] = seen
        for run_dir in work.glob("run-*"):  # checkpoints of finished runs: ~100 MB each
            shutil.rmtree(run_dir, ignore_errors=True)
        init_acc = sslpipe_init_knn(quality, args, bank, queries, records, opts, results)
    record = {
        "kind": "run", **run_key(name, seed, opts), "system": variant.system, "note": variant.note,
        "sslpipe_set": list(variant.sets), "sslpipe_workers": variant.workers if variant.system == "sslpipe" else None,
        "ntxent_forced": forced, "knn_top1": out["knn_top1"], "knn_top1_at_init": init_acc,
        "gain_points": round(100 * (out["knn_top1"] - init_acc), 2), "final_loss": out["final_loss"],
        "train_seconds": out["train_seconds"], "images_per_s": out["images_per_s"], "malloc": out["malloc"],
        "started": started, "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)], **host_info(),
    }
    return record


# --------------------------------------------------------------------------- table


def summarise(records: list[dict[str, Any]], opts: argparse.Namespace | None = None) -> list[dict[str, Any]]:
    """Per (variant, size, precision): mean and spread (max - min) over seeds of the gain and the final kNN."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") != "run":
            continue
        if opts is not None and (r["train_images"], r["test_images"], r["precision"]) != (
                opts.train_images, opts.test_images, opts.precision):
            continue
        groups.setdefault((r["train_images"], r["test_images"], r["precision"], r["variant"]), []).append(r)
    order = list(VARIANTS)
    rows = []
    for (train_images, test_images, precision, variant), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][:3], order.index(kv[0][3]) if kv[0][3] in order else 99)):
        gains = [r["gain_points"] for r in rs]
        finals = [100 * r["knn_top1"] for r in rs]
        inits = [100 * r["knn_top1_at_init"] for r in rs]
        rows.append({"variant": variant, "train_images": train_images, "test_images": test_images,
                     "precision": precision, "seeds": sorted(r["seed"] for r in rs),
                     "gain_mean": round(statistics.fmean(gains), 2), "gain_spread": round(max(gains) - min(gains), 2),
                     "knn_mean": round(statistics.fmean(finals), 2), "knn_spread": round(max(finals) - min(finals), 2),
                     "init_mean": round(statistics.fmean(inits), 2),
                     "gains": gains, "knn": [round(f, 2) for f in finals]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'variant':<14}{'images':>8}{'queries':>8}{'prec':>6}{'seeds':>7}"
          f"{'kNN at init':>13}{'final kNN':>16}{'gain (points)':>18}")
    for r in rows:
        spread = lambda m, s: f"{m:6.2f} ± {s / 2:4.2f}"  # noqa: E731 - half the range of two seeds
        print(f"{r['variant']:<14}{r['train_images']:>8}{r['test_images']:>8}{r['precision']:>6}{len(r['seeds']):>7}"
              f"{r['init_mean']:>13.2f}{spread(r['knn_mean'], r['knn_spread']):>16}"
              f"{spread(r['gain_mean'], r['gain_spread']):>18}")
    print("(± = half the range over seeds; with two seeds, each seed's figure is mean ± that)")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", help="CIFAR-10 image folder (default: $SSLPIPE_CIFAR10)")
    parser.add_argument("--train-images", type=int, default=10240, help="40 steps of 256 (0 = all 50,000: 195 steps)")
    parser.add_argument("--test-images", type=int, default=0, help="kNN queries (0 = all 10,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, run in this order: {', '.join(VARIANTS)}")
    parser.add_argument("--order", choices=["seed", "variant"], default="seed",
                        help="seed: every variant for the first seed, then the next seed (a partial table still "
                             "compares every variant); variant: both seeds of a variant before the next")
    parser.add_argument("--results", help="JSON-lines file (default bench/results/ablation-<images>-<precision>.jsonl)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "sslpipe-ablation"),
                        help="shards (reused between runs) and run folders (removed after each run)")
    parser.add_argument("--table", action="store_true", help="print the table of what the results file holds, run nothing")
    parser.add_argument("--plan", action="store_true", help="list the runs still to do, run nothing")
    parser.add_argument("--calibrated-init", action="store_true",
                        help="train nothing: score each variant's untrained backbone with its BatchNorms as built and "
                             "with their statistics calibrated on --calibration-images bank images")
    parser.add_argument("--calibration-images", type=int, default=2560)
    opts = parser.parse_args(argv)

    size = "all" if not opts.train_images else str(opts.train_images)
    results = Path(opts.results or REPO / "bench" / "results" / f"ablation-{size}-{opts.precision}.jsonl")
    records = read_records(results)
    if opts.table:
        rows = summarise(records)
        print_table(rows)
        return rows

    names = [n.strip() for n in opts.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    skipped = [n for n in names if VARIANTS[n].ntxent in ("fp32", "bf16") and opts.precision == "fp32"]
    if skipped:
        print(f"[ablation] {', '.join(skipped)}: the NT-Xent dtype only differs under bf16 autocast; "
              "in an fp32 run it is the baseline, skipped", flush=True)
        names = [n for n in names if n not in skipped]
    pairs = ([(n, s) for s in seeds for n in names] if opts.order == "seed" else [(n, s) for n in names for s in seeds])
    todo = [(n, s) for n, s in pairs if has_record(records, run_key(n, s, opts)) is None]
    print(f"[ablation] {results}: {len(pairs) - len(todo)} of {len(pairs)} runs recorded; to do: "
          + (", ".join(f"{n}/seed {s}" for n, s in todo) or "nothing"), flush=True)
    if opts.plan or (not todo and not opts.calibrated_init):
        rows = summarise(records, opts)
        print_table(rows)
        return rows

    if opts.calibrated_init:
        quality = load_quality()
        root = quality.cifar_root(opts.cifar10)
        bank = quality.decode(quality.pick_images(root / "train", opts.train_images))
        queries = quality.decode(quality.pick_images(root / "test", opts.test_images))
        for name, seed in pairs:
            key = {"variant": name, "seed": seed, "train_images": opts.train_images, "test_images": opts.test_images}
            if has_record(records, key, kind="init_calibrated") is not None:
                continue
            rec = {**init_knn_both_ways(quality, name, seed, opts, bank, queries, records), "variant": name}
            print(f"[ablation] untrained {name} seed {seed}: kNN {rec['knn_top1_at_init']:.4f} as built, "
                  f"{rec['knn_top1_at_init_bn_calibrated']:.4f} with calibrated BatchNorm", flush=True)
            append_record(results, rec)
        return []

    quality = load_quality()
    root = quality.cifar_root(opts.cifar10)
    train_items = quality.pick_images(root / "train", opts.train_images)
    bank = quality.decode(train_items)
    queries = quality.decode(quality.pick_images(root / "test", opts.test_images))
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for name, seed in todo:
        print(f"[ablation] {name} seed {seed}: {VARIANTS[name].note} ({datetime.datetime.now():%H:%M})", flush=True)
        record = run_one(quality, name, seed, opts, root, train_items, bank, queries, work, records, results)
        append_record(results, record)
        records.append(record)
        print(f"[ablation] {name} seed {seed}: kNN {record['knn_top1']:.4f}, at init {record['knn_top1_at_init']:.4f}, "
              f"gain {record['gain_points']:+.2f} points, {record['wall_seconds']:.0f} s", flush=True)
    rows = summarise(records, opts)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
