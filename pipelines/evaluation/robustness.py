"""Image corruptions at fixed severities, and the accuracy drop they cause.

Why: an embedding that keeps its accuracy under noise, blur and compression
artefacts is more useful on real, uncurated inputs. We follow the
ImageNet-C / CIFAR-10-C recipe (Hendrycks & Dietterich 2019): a few
corruption kinds, each at five *fixed* severities, so numbers are
comparable across runs and models. Only three cheap kinds are implemented
(no external assets needed): gaussian noise, gaussian blur, JPEG re-encode.

Severity parameters are those of the published benchmarks; the CIFAR-10-C
ones are milder, because the same blur sigma destroys a 32-px image but
barely touches a 224-px one. ``preset="auto"`` picks by image size.
"""

from __future__ import annotations

import io
from typing import Literal, Mapping, Sequence, TypedDict

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = [
    "KINDS",
    "SEVERITY_PARAMS",
    "severity_parameter",
    "corrupt",
    "KindDrop",
    "robustness_drop",
]

Kind = Literal["gaussian_noise", "gaussian_blur", "jpeg"]
Preset = Literal["auto", "cifar10-c", "imagenet-c"]
KINDS: tuple[Kind, ...] = ("gaussian_noise", "gaussian_blur", "jpeg")

#: preset -> kind -> parameter at severities 1..5.
#: gaussian_noise: std on the [0, 1] intensity scale; gaussian_blur: sigma in
#: pixels; jpeg: PIL quality (lower = stronger).
SEVERITY_PARAMS: dict[str, dict[str, tuple[float, ...]]] = {
    "cifar10-c": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "jpeg": (80, 65, 58, 50, 40),
    },
    "imagenet-c": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
        "jpeg": (25, 18, 15, 10, 7),
    },
}

#: Images whose shorter side is at most this use the CIFAR-10-C preset under "auto".
_AUTO_SMALL_SIDE = 64


def _resolve_preset(preset: Preset, height: int, width: int) -> Preset:
    if preset == "auto":
        return "cifar10-c" if min(height, width) <= _AUTO_SMALL_SIDE else "imagenet-c"
    if preset not in SEVERITY_PARAMS:
        raise ValueError(f"unknown preset {preset!r}")
    return preset


def severity_parameter(kind: Kind, severity: int, preset: Preset = "auto", image_size: int = 224) -> float:
    """The corruption parameter used for (kind, severity); for naming it in reports."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {KINDS}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    name = _resolve_preset(preset, image_size, image_size)
    return float(SEVERITY_PARAMS[name][kind][int(severity) - 1])


def _gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    noisy = x.astype(np.float32) / 255.0 + rng.normal(0.0, std, size=x.shape).astype(np.float32)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    # Blur only the two spatial axes of the [N, H, W, C] batch, in one vectorised call.
    blurred = gaussian_filter(x.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(x)
    for i, img in enumerate(x):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert(pil.mode))
        out[i] = dec.reshape(img.shape)
    return out


def corrupt(
    images: np.ndarray,
    kind: Kind,
    severity: int,
    seed: int,
    preset: Preset = "auto",
) -> np.ndarray:
    """Return a corrupted copy of a uint8 batch [N, H, W, C] (C = 1 or 3) or [N, H, W].

    Args:
        images: uint8 images; the input is not modified.
        kind: "gaussian_noise", "gaussian_blur" or "jpeg".
        severity: 1 (mild) .. 5 (strong).
        seed: noise seed, so a corrupted test set is the same in every run.
        preset: severity table; "auto" = CIFAR-10-C for images of side <= 64 px, else ImageNet-C.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {x.dtype}")
    squeeze = x.ndim == 3
    if squeeze:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W, C] with C in (1, 3), got {images.shape}")
    param = severity_parameter(kind, severity, _resolve_preset(preset, x.shape[1], x.shape[2]))
    if kind == "gaussian_noise":
        out = _gaussian_noise(x, param, np.random.default_rng(seed))
    elif kind == "gaussian_blur":
        out = _gaussian_blur(x, param)
    else:
        out = _jpeg(x, int(param))
    return out[..., 0] if squeeze else out


class KindDrop(TypedDict):
    """Accuracy drop for one corruption kind (accuracies in [0, 1])."""

    accuracy: float  # mean over the severities given
    drop: float  # clean - accuracy (absolute, in accuracy units)
    relative_drop: float  # drop / clean
    by_severity: dict[int, float]  # severity -> clean - accuracy at that severity


def _as_severity_map(value: Mapping[int, float] | Sequence[float] | float) -> dict[int, float]:
    if isinstance(value, Mapping):
        return {int(s): float(a) for s, a in value.items()}
    accuracies = np.asarray(value, dtype=np.float64)
    if accuracies.ndim == 0:
        return {0: float(accuracies)}  # a single, already-aggregated accuracy
    return {s + 1: float(a) for s, a in enumerate(accuracies)}  # list is severities 1..n


def robustness_drop(
    clean_acc: float,
    corrupted_acc_by_kind: Mapping[str, Mapping[int, float] | Sequence[float] | float],
) -> dict[str, object]:
    """Summarise how much accuracy each corruption costs.

    Args:
        clean_acc: accuracy on the clean test set.
        corrupted_acc_by_kind: kind -> {severity: accuracy}, or a list for severities 1..n,
            or one already-averaged accuracy.

    Returns:
        {"clean": clean_acc,
         "per_kind": {kind: KindDrop},
         "mean_accuracy", "mean_drop", "mean_relative_drop": averaged over kinds}.

    Absolute and relative drops are both given because a model with a lower
    clean accuracy has less to lose; the relative figure corrects for that.
    """
    if not corrupted_acc_by_kind:
        raise ValueError("no corrupted accuracies given")
    clean = float(clean_acc)
    per_kind: dict[str, KindDrop] = {}
    for kind, value in corrupted_acc_by_kind.items():
        sev = _as_severity_map(value)
        acc = float(np.mean(list(sev.values())))
        drop = clean - acc
        per_kind[kind] = KindDrop(
            accuracy=acc,
            drop=drop,
            relative_drop=drop / clean if clean > 0 else float("nan"),
            by_severity={s: clean - a for s, a in sorted(sev.items())},
        )
    return {
        "clean": clean,
        "per_kind": per_kind,
        "mean_accuracy": float(np.mean([d["accuracy"] for d in per_kind.values()])),
        "mean_drop": float(np.mean([d["drop"] for d in per_kind.values()])),
        "mean_relative_drop": float(np.mean([d["relative_drop"] for d in per_kind.values()])),
    }
