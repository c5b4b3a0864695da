"""The ``method:`` section: which SSL method, and the constructor keywords a config may set for it.

``METHOD_KEYS`` (who takes what), ``DERIVED_METHOD_ARGS`` (what the pipeline sets from other sections)
and the allowed range of every key live here, beside the dataclass they validate; tests keep them in
step with ``ssl_models.methods``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from pipelines.config_checks import check

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
_METHOD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
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
            check(key in takes, f"{path}.{key}",
                  f"unset for {self.name}, which does not take it ({self.name} takes: {', '.join(sorted(takes))}; "
                  f"unset keys keep the method's own defaults)")
            ok, allowed = _METHOD_RULES[key]
            check(ok(value), f"{path}.{key}", allowed)
        if self.tau_min is not None and self.tau_max is not None:
            check(self.tau_min <= self.tau_max, f"{path}.tau_min", f"<= method.tau_max ({self.tau_max})")
        if self.decoder_dim is not None and self.decoder_heads is not None:
            check(self.decoder_dim % self.decoder_heads == 0, f"{path}.decoder_heads",
                  f"a divisor of method.decoder_dim ({self.decoder_dim})")

