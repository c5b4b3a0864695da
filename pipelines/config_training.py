"""The sections that shape training: ``backbone``, ``augment``, ``train`` (Ray Train and the
optimisation recipe) and ``dynamic`` (pruning during pretraining)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.config_checks import check, check_levels

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
        check(self.width >= 4, f"{path}.width", "an integer >= 4")
        check(self.patch_size >= 1, f"{path}.patch_size", "an integer >= 1")
        check(self.vit_depth >= 0, f"{path}.vit_depth", "an integer >= 0 (0 = the named size)")


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
        check(self.renderer in ("batched", "torchvision"), f"{path}.renderer", "'batched' or 'torchvision'")
        check(0 < self.crop_scale_min <= self.crop_scale_max <= 1, f"{path}.crop_scale_min/max", "0 < min <= max <= 1")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            check(0 <= getattr(self, name) <= 1, f"{path}.{name}", "a probability in [0, 1]")
        check(0 <= self.jitter_strength <= 2, f"{path}.jitter_strength", "a number in [0, 2]")


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
    #: a resumed run continues the interrupted epoch at its step (see pipelines/train_loop.py)
    checkpoint_every_steps: int = 0
    #: write the keys (stream mode) and sample ids each worker trained on, per epoch, to
    #: ``run_dir/seen_keys/epoch_NNNNNN_rank_R.parquet``: an audit of what every epoch read
    record_seen_keys: bool = False
    #: worker failures to survive (FailureConfig.max_failures)
    max_failures: int = 1
    #: torch threads per worker; 0 = cpus_per_worker rounded up
    threads_per_worker: int = 0
    #: the online monitor (pipelines/monitor.py) every N epochs and at the last one (0 = off): kNN top-1 on the labelled
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
        check(self.num_workers >= 0, f"{path}.num_workers", "an integer >= 0 (0 runs in the driver)")
        check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "a number > 0")
        check(self.epochs >= 1, f"{path}.epochs", "an integer >= 1")
        check(self.time_budget_s >= 0, f"{path}.time_budget_s", "a number >= 0 (0 = no budget)")
        check(self.batch_size >= 2, f"{path}.batch_size", "an integer >= 2")
        workers = max(1, self.num_workers)
        check(
            (self.batch_size // workers) % max(1, self.grad_accum_steps) == 0,
            f"{path}.grad_accum_steps",
            f"a divisor of the per-worker batch ({self.batch_size // workers})",
        )
        check(
            self.batch_size % workers == 0,
            f"{path}.batch_size",
            f"a multiple of train.num_workers ({workers}), got {self.batch_size}",
        )
        check(self.lr > 0, f"{path}.lr", "a number > 0")
        check(not (self.sync_batchnorm and self.num_workers > 1 and not self.use_gpu), f"{path}.sync_batchnorm",
              "false when several workers train on CPUs (PyTorch's SyncBatchNorm works on GPU modules only); "
              "set train.use_gpu=true or train.sync_batchnorm=false")
        check(self.weight_decay >= 0, f"{path}.weight_decay", "a number >= 0")
        check(self.warmup_epochs >= 0, f"{path}.warmup_epochs", "an integer >= 0")
        check(self.checkpoint_every_epochs >= 1, f"{path}.checkpoint_every_epochs", "an integer >= 1")
        check(self.max_steps >= 0, f"{path}.max_steps", "an integer >= 0 (0 = train.epochs decides)")
        check(self.checkpoint_every_steps >= 0, f"{path}.checkpoint_every_steps", "an integer >= 0 (0 = off)")
        check(self.max_failures >= 0, f"{path}.max_failures", "an integer >= 0")
        check(self.threads_per_worker >= 0, f"{path}.threads_per_worker", "an integer >= 0")
        check(self.progress_every_s >= 0, f"{path}.progress_every_s", "a number of seconds >= 0 (0 = off)")
        check(self.grad_accum_steps >= 1, f"{path}.grad_accum_steps", "an integer >= 1")
        check(self.knn_monitor_every >= 0, f"{path}.knn_monitor_every", "an integer >= 0 (0 = off)")
        check(self.knn_monitor_bank >= 1, f"{path}.knn_monitor_bank", "an integer >= 1")
        check(self.knn_monitor_queries >= 1, f"{path}.knn_monitor_queries", "an integer >= 1")
        for key in ("tracking_uri", "tracking_experiment"):  # MLflow settings are not ignored silently
            check(self.tracking == "mlflow" or getattr(self, key) == getattr(TrainConfig, key), f"{path}.{key}",
                  "left at its default unless train.tracking=mlflow (it is an MLflow setting)")
        check(bool(self.tracking_experiment.strip()), f"{path}.tracking_experiment", "a non-empty MLflow experiment name")
        if self.tracking != "none":
            from pipelines.tracking import missing_client

            missing = missing_client(self.tracking)
            check(missing is None, f"{path}.tracking", f"a tracker whose client is installed: {missing}")
        check(self.monitor_pool_samples == 0 or self.monitor_pool_samples >= 16, f"{path}.monitor_pool_samples",
              "0 (off) or an integer >= 16 (RankMe and uniformity need a sample, not a handful)")
        check(0 <= self.collapse_std_threshold < 1, f"{path}.collapse_std_threshold", "a number in [0, 1)")


@dataclass
class DynamicConfig:
    """Dynamic dataset pruning during pretraining (README, "What is in the box": dynamic pruning)."""

    #: ``none`` by default: no rule beat the whole pool at equal steps in bench/pruning_grid.py (README's advice).
    #: ``random`` re-draws a random keep_fraction each round: the control that shows what a selection rule is worth
    policy: Literal["none", "cluster_balance", "loss_based", "random"] = "none"
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
        check(self.embed_actors >= 1, f"{path}.embed_actors", "an integer >= 1")
        check(self.embed_num_gpus >= 0, f"{path}.embed_num_gpus", "a number >= 0 (0 = CPU actors)")
        check(self.warmup_epochs >= 0, f"{path}.warmup_epochs", "an integer >= 0")
        check(self.every_epochs >= 1, f"{path}.every_epochs", "an integer >= 1")
        check(0 < self.keep_fraction <= 1, f"{path}.keep_fraction", "a fraction in (0, 1]")
        check(self.subset_for_clustering >= 10, f"{path}.subset_for_clustering", "an integer >= 10")
        check_levels(self.levels, f"{path}.levels")
        check(self.resampling_steps >= 0, f"{path}.resampling_steps", "an integer >= 0")

