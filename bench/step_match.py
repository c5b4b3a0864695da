"""Issue #34, the cheap half: same weights, same views, does an sslpipe step do what a LightlySSL step does?

A kNN ablation (``bench/ablation.py``) needs hours per row on 2 CPU cores and two seeds to see past its
noise. This bench answers the deterministic part in minutes, on one fixed batch sequence of real CIFAR-10
views rendered once by LightlySSL's own transform (pixels in [0, 1], each side normalising them its way):

1. ``update``: LightlySSL's loop (``ResNetGenerator`` backbone, ``SimCLRProjectionHead``, ``NTXentLoss``, SGD +
   ``CosineAnnealingLR``) and sslpipe's (the bench recipe's ``SimCLR`` from ``build_method_from_config``, the
   training loop's own optimizer and schedule: ``pipelines.pretrain._build_optimizer``, ``SCHEDULES``), the
   same initial weights (LightlySSL's, copied by position), ImageNet normalisation on both, fp32, one
   process. The loss at every step and the largest relative parameter difference after the last are
   printed: equal to float noise means one sslpipe step *is* one LightlySSL step, and whatever differs in
   the gain comes from the random processes (init, views, data order) or from the worker split.
2. ``gradients``: from those same weights, the first step's gradient under each switch of the ablation,
   against the reference (sslpipe, whole batch, fp32, ImageNet normalisation): cosine and norm ratio of the
   whole gradient and of each convolution's. ``norm_half`` (0.5/0.5 instead of ImageNet's), ``bn_split``
   (each half of the batch through BatchNorm on its own: what two DDP workers compute), ``ntxent_bf16``
   (only the similarity matmul in bf16), ``bf16_autocast`` and ``bf16_autocast_ntxent_fp32`` (the whole
   step under bf16 autocast with the shipped loss / with the loss forced to fp32; ``--bf16`` only: bf16 is
   emulated, and slow, on CPUs without AVX512-BF16).
3. ``init``: how far one step moves each convolution, ``|dW| / |W|``, from torchvision's kaiming init
   (sslpipe's default) against PyTorch's default (LightlySSL's), on the same views. Behind BatchNorm a
   convolution's function depends only on W's direction, so this relative step is its effective
   learning rate.

Prints one JSON object, then tables.

    SSLPIPE_CIFAR10=/data/cifar10 python bench/step_match.py [--batch 64] [--steps 3] [--bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.models import build_method_from_config  # noqa: E402
from pipelines.pretrain import _build_optimizer  # noqa: E402
from ssl_models.schedules import SCHEDULES  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


quality = _load("quality")
ablation = _load("ablation")


def _args(seed: int, batch: int, sets: list[str]) -> argparse.Namespace:
    return argparse.Namespace(epochs=1, batch=batch, seed=seed, sslpipe_workers=1, train_images=0, compile=False,
                              sslpipe_set=sets, precision="fp32")


def sslpipe_method(seed: int, batch: int, sets: list[str]) -> tuple[nn.Module, Any]:
    cfg = quality.sslpipe_config(Path(tempfile.gettempdir()) / "unused-run-dir", _args(seed, batch, sets))
    return build_method_from_config(cfg), cfg


def copy_by_position(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s tensors into ``dst`` in state-dict order (the two builds list the same layers in the same order)."""
    s, d = list(src.state_dict().values()), dst.state_dict()
    if len(s) != len(d) or any(a.shape != b.shape for a, b in zip(s, d.values())):
        raise RuntimeError(f"{type(src).__name__} and {type(dst).__name__} do not line up tensor for tensor")
    dst.load_state_dict(dict(zip(d, [t.clone() for t in s])))


def lightly_modules(seed: int) -> tuple[nn.Module, nn.Module]:
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(seed)
    return quality.lightly_backbone(), SimCLRProjectionHead(512, quality.PROJ_HIDDEN, quality.PROJ_DIM)


def raw_views(images: np.ndarray, steps: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of two views each, by LightlySSL's SimCLRTransform (the bench's settings) without
    its Normalize: float pixels in [0, 1], so each system can normalise them its own way."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    transform = SimCLRTransform(input_size=32, cj_prob=quality.CJ_PROB, cj_strength=quality.CJ_STRENGTH,
                                min_scale=quality.MIN_SCALE, random_gray_scale=quality.GRAY_PROB, gaussian_blur=0.0,
                                hf_prob=quality.FLIP_PROB, normalize=None)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        pick = rng.choice(len(images), batch, replace=False)
        pairs = [transform(Image.fromarray(images[i])) for i in pick]
        out.append((torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])))
    return out


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in module.parameters()])


def displacement_diff(a: nn.Module, b: nn.Module, start: torch.Tensor) -> float:
    """|(a - start) - (b - start)| / |b - start|: how much two runs' total updates differ, relative to the update."""
    da, db = flat(a) - start, flat(b) - start
    return float((da - db).norm() / db.norm())


# --------------------------------------------------------------------------- 1. update rule


def update_match(images: np.ndarray, opts) -> dict[str, Any]:
    """K optimizer steps of both loops from the same weights on the same views."""
    from lightly.loss import NTXentLoss

    views = raw_views(images, opts.steps, opts.batch, opts.seed)
    l_backbone, l_head = lightly_modules(opts.seed)
    method, cfg = sslpipe_method(opts.seed, opts.batch, ["backbone.conv_init=torch_default", *ablation.IMAGENET_SETS])
    copy_by_position(l_backbone, method.backbone)
    copy_by_position(l_head, method.projector)
    total = opts.total_steps

    criterion = NTXentLoss(temperature=quality.TEMPERATURE)
    params = list(l_backbone.parameters()) + list(l_head.parameters())
    l_opt = torch.optim.SGD(params, lr=quality.BASE_LR * opts.batch / 128, momentum=quality.MOMENTUM,
                            weight_decay=quality.WEIGHT_DECAY)
    l_sched = torch.optim.lr_scheduler.CosineAnnealingLR(l_opt, T_max=total)
    s_opt = _build_optimizer(method, cfg.train)
    schedule = SCHEDULES[cfg.train.schedule]
    # the float-noise floor: the same sslpipe loop from weights moved by about one fp32 rounding (a relative
    # 1e-7); a network behind BatchNorm amplifies such a difference to ~1e-3 of the gradient within a step
    twin, _ = sslpipe_method(opts.seed, opts.batch, ["backbone.conv_init=torch_default", *ablation.IMAGENET_SETS])
    twin.load_state_dict(method.state_dict())
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    t_opt = _build_optimizer(twin, cfg.train)
    start = flat(method)
    l_backbone.train(), l_head.train(), method.train(), twin.train()
    mean, std = cfg.data.normalization()
    losses = []
    for step, (v0, v1) in enumerate(views):
        x0, x1 = normalise(v0, IMAGENET_MEAN, IMAGENET_STD), normalise(v1, IMAGENET_MEAN, IMAGENET_STD)
        loss_l = criterion(l_head(l_backbone(x0).flatten(1)), l_head(l_backbone(x1).flatten(1)))
        l_opt.zero_grad()
        loss_l.backward()
        l_lr = l_opt.param_groups[0]["lr"]
        l_opt.step()
        l_sched.step()

        lr = schedule(step, total, 0, cfg.train.lr)
        step_losses = []
        for model, opt in ((method, s_opt), (twin, t_opt)):  # the training loop's step, minus Ray and DDP
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss_s, _ = model([normalise(v0, mean, std), normalise(v1, mean, std)])
            loss_s.backward()
            opt.step()
            step_losses.append(float(loss_s.detach()))
        losses.append({"step": step, "lr_lightly": l_lr, "lr_sslpipe": lr, "loss_lightly": float(loss_l.detach()),
                       "loss_sslpipe": step_losses[0], "loss_sslpipe_nudged": step_losses[1]})
    lightly_model = nn.ModuleDict({"backbone": l_backbone, "projector": l_head})  # same parameter order as SimCLR's
    return {"steps": losses,
            "update_diff_vs_lightly": displacement_diff(method, lightly_model, start),
            "update_diff_vs_nudged_self": displacement_diff(method, twin, start)}


# --------------------------------------------------------------------------- 2. gradients under each switch


def _grads(method: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def one_step_grads(method: nn.Module, v0: torch.Tensor, v1: torch.Tensor, mean, std, *, split: int = 1,
                   autocast: bool = False, loss: Callable | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradient of one step; ``split`` halves pass BatchNorm apart (DDP workers), ``loss`` replaces NT-Xent."""
    method.zero_grad(set_to_none=True)
    x0, x1 = normalise(v0, mean, std), normalise(v1, mean, std)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        z0 = torch.cat([method.projector(method.backbone(c)) for c in x0.chunk(split)])
        z1 = torch.cat([method.projector(method.backbone(c)) for c in x1.chunk(split)])
        value = (loss or method.pair_loss)(z0, z1)
    value.backward()
    return float(value), _grads(method)


def compare(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    a = torch.cat([g.double().flatten() for g in ref.values()])
    b = torch.cat([other[k].double().flatten() for k in ref])
    conv = [k for k, g in ref.items() if g.dim() == 4]
    per_conv = [float(torch.nn.functional.cosine_similarity(ref[k].double().flatten(), other[k].double().flatten(), dim=0))
                for k in conv]
    return {"cosine": round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 6),
            "norm_ratio": round(float(b.norm() / a.norm()), 4),
            "min_conv_cosine": round(min(per_conv), 6), "median_conv_cosine": round(float(np.median(per_conv)), 6)}


def gradient_switches(images: np.ndarray, opts) -> dict[str, Any]:
    (v0, v1), = raw_views(images, 1, opts.batch, opts.seed + 1)
    l_backbone, l_head = lightly_modules(opts.seed)
    method, cfg = sslpipe_method(opts.seed, opts.batch, ["backbone.conv_init=torch_default"])
    copy_by_position(l_backbone, method.backbone)
    copy_by_position(l_head, method.projector)
    method.train()
    state = {k: v.clone() for k, v in method.state_dict().items()}

    def fresh() -> nn.Module:  # BatchNorm running statistics move on every forward: start each from the same
        method.load_state_dict(state)
        return method

    t = quality.TEMPERATURE
    ref_loss, ref = one_step_grads(fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD)
    def nudged() -> nn.Module:  # weights moved by about one fp32 rounding: the float-noise floor of a gradient
        model = fresh()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        return model

    runs: dict[str, Callable[[], tuple[float, dict]]] = {
        "nudged 1e-7 (float noise)": lambda: one_step_grads(nudged(), v0, v1, IMAGENET_MEAN, IMAGENET_STD),
        "norm_half": lambda: one_step_grads(fresh(), v0, v1, (0.5,) * 3, (0.5,) * 3),
        "bn_split": lambda: one_step_grads(fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD, split=2),
        "ntxent_bf16": lambda: one_step_grads(fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD,
                                              loss=lambda a, b: ablation.forced_nt_xent(a, b, t, torch.bfloat16)),
        "ntxent_fp32_forced": lambda: one_step_grads(fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD,
                                                     loss=lambda a, b: ablation.forced_nt_xent(a, b, t, torch.float32)),
    }
    if opts.bf16:
        runs["bf16_autocast"] = lambda: one_step_grads(fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD, autocast=True)
        runs["bf16_autocast_ntxent_fp32"] = lambda: one_step_grads(
            fresh(), v0, v1, IMAGENET_MEAN, IMAGENET_STD, autocast=True,
            loss=lambda a, b: ablation.forced_nt_xent(a, b, t, torch.float32))
    out: dict[str, Any] = {"reference_loss": ref_loss}
    for name, run in runs.items():
        t0 = time.perf_counter()
        value, grads = run()
        out[name] = {"loss": round(value, 6), **compare(ref, grads), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[step_match] {name}: {out[name]}", flush=True)
    return out


# --------------------------------------------------------------------------- 3. init and effective step


def init_steps(images: np.ndarray, opts) -> dict[str, Any]:
    """|dW| / |W| per convolution after one SGD step at the recipe's first learning rate, per init."""
    (v0, v1), = raw_views(images, 1, opts.batch, opts.seed + 2)
    out = {}
    for init in ("kaiming_fan_out", "torch_default"):
        method, cfg = sslpipe_method(opts.seed, opts.batch, [f"backbone.conv_init={init}"])
        method.train()
        before = {n: p.detach().clone() for n, p in method.backbone.named_parameters() if p.dim() == 4}
        opt = _build_optimizer(method, cfg.train)
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr
        mean, std = cfg.data.normalization()
        loss, _ = method([normalise(v0, mean, std), normalise(v1, mean, std)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = dict(method.backbone.named_parameters())
        rel = {n: float((after[n] - w).norm() / w.norm()) for n, w in before.items()}
        sq = {n: float(w.pow(2).sum()) for n, w in before.items()}
        out[init] = {"median_rel_step": float(np.median(list(rel.values()))), "rel_step": rel, "sq_norm": sq,
                     "loss": float(loss)}
    ratio = {n: out["torch_default"]["rel_step"][n] / out["kaiming_fan_out"]["rel_step"][n]
             for n in out["kaiming_fan_out"]["rel_step"]}
    norm_ratio = {n: out["kaiming_fan_out"]["sq_norm"][n] / out["torch_default"]["sq_norm"][n]
                  for n in out["kaiming_fan_out"]["sq_norm"]}
    out["rel_step_ratio_default_over_kaiming"] = {"median": float(np.median(list(ratio.values()))),
                                                  "min": min(ratio.values()), "max": max(ratio.values())}
    out["sq_norm_ratio_kaiming_over_default"] = {"median": float(np.median(list(norm_ratio.values()))),
                                                 "min": min(norm_ratio.values()), "max": max(norm_ratio.values())}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", help="CIFAR-10 image folder (default: $SSLPIPE_CIFAR10)")
    parser.add_argument("--batch", type=int, default=64, help="images per step (two views each)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps in the update comparison")
    parser.add_argument("--total-steps", type=int, default=40, help="the cosine schedule's length (the 40-step run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="update,gradients,init")
    parser.add_argument("--bf16", action="store_true", help="also the bf16 autocast rows (emulated on AVX2: slow)")
    opts = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    root = quality.cifar_root(opts.cifar10)
    images, _ = quality.decode(quality.pick_images(root / "train", 2048))
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    report: dict[str, Any] = {"batch": opts.batch, "seed": opts.seed, "cpu": torch.backends.cpu.get_cpu_capability()}
    for part, fn in (("update", update_match), ("gradients", gradient_switches), ("init", init_steps)):
        if part in parts:
            t0 = time.perf_counter()
            report[part] = fn(images, opts)
            print(f"[step_match] {part} done in {time.perf_counter() - t0:.0f}s", flush=True)
    print(json.dumps(report, indent=1, default=float))
    if "update" in report:
        u = report["update"]
        print(f"\n{'step':>5}{'lr lightly':>12}{'lr sslpipe':>12}{'loss lightly':>14}{'loss sslpipe':>14}")
        for s in u["steps"]:
            print(f"{s['step']:>5}{s['lr_lightly']:>12.6f}{s['lr_sslpipe']:>12.6f}{s['loss_lightly']:>14.6f}"
                  f"{s['loss_sslpipe']:>14.6f}")
        print(f"after {len(u['steps'])} steps, |update difference| / |update|: sslpipe vs LightlySSL "
              f"{u['update_diff_vs_lightly']:.2e}; sslpipe vs itself from weights nudged by 1e-7 (float noise) "
              f"{u['update_diff_vs_nudged_self']:.2e}")
    if "gradients" in report:
        print(f"\n{'switch':<28}{'loss':>10}{'cosine':>10}{'norm ratio':>12}{'min conv cos':>14}")
        for name, g in report["gradients"].items():
            if isinstance(g, dict):
                print(f"{name:<28}{g['loss']:>10.5f}{g['cosine']:>10.5f}{g['norm_ratio']:>12.4f}{g['min_conv_cosine']:>14.5f}")
    if "init" in report:
        i = report["init"]
        print(f"\nconv |dW|/|W| after one step, median: kaiming {i['kaiming_fan_out']['median_rel_step']:.2e}, "
              f"torch_default {i['torch_default']['median_rel_step']:.2e}; ratio default/kaiming "
              f"{i['rel_step_ratio_default_over_kaiming']}; "
              f"|W|^2 ratio kaiming/default {i['sq_norm_ratio_kaiming_over_default']}")
    return report


if __name__ == "__main__":
    main()
