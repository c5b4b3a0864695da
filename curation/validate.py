"""Decode validation: decide, per image, whether it is a usable training image.

Every rejection carries a reason that goes into the manifest, so nothing is
silently dropped. The pixel-count check runs on the header *before* the pixels
are decoded, so a decompression bomb costs a few bytes of parsing, not gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.decode import HIGH_DEPTH_MODES, Intensity, decode_to_array, to_8bit

__all__ = ["ImageCheck", "ValidationRules", "check_image", "decode_to_array"]

#: reasons this module can give (besides "ok")
REASONS = ("missing_image", "decode_error", "too_many_pixels", "too_small", "extreme_aspect", "low_variance")


@dataclass(frozen=True)
class ValidationRules:
    min_side: int = 8
    max_aspect: float = 4.0
    max_pixels: int = 50_000_000
    min_pixel_std: float = 2.0
    #: how 16-bit/float images are scaled to 8 bits before they are judged (``data.intensity``): an
    #: image that is flat after this scaling is ``low_variance``
    intensity: Intensity = "full_range"


@dataclass
class ImageCheck:
    """Outcome for one image. ``gray`` is a small grayscale copy for hashing (None if rejected early)."""

    reason: str
    width: int = 0
    height: int = 0
    pixel_sha256: str = ""
    gray: np.ndarray | None = None


def check_image(data: bytes | None, rules: ValidationRules) -> ImageCheck:
    """Decode ``data`` under ``rules``; never raises for bad bytes."""
    if not data:
        return ImageCheck("missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))  # becomes a converted copy below
            width, height = im.size
            if width * height > rules.max_pixels:
                return ImageCheck("too_many_pixels", width, height)
            im.load()
    except Image.DecompressionBombError:
        return ImageCheck("too_many_pixels")
    except Exception:  # noqa: BLE001 - any decoder failure means "cannot use this file"
        return ImageCheck("decode_error")
    if min(width, height) < rules.min_side:
        return ImageCheck("too_small", width, height)
    if max(width, height) / max(1, min(width, height)) > rules.max_aspect:
        return ImageCheck("extreme_aspect", width, height)
    try:
        if im.mode in HIGH_DEPTH_MODES:  # hash the raw samples; judge and hash perceptually on the scaled ones
            pixels = np.asarray(im)
            im = to_8bit(im, 1, rules.intensity)
        else:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            pixels = np.asarray(im)
        gray = np.asarray(im.convert("L"))
    except Exception:  # noqa: BLE001 - a mode PIL decodes but cannot convert is as unusable as a bad file
        return ImageCheck("decode_error", width, height)
    # hash mode + shape + pixels: identical pixels in different files are exact duplicates
    digest = hashlib.sha256(f"{im.mode}{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    if float(gray.std()) < rules.min_pixel_std:
        return ImageCheck("low_variance", width, height, digest)
    return ImageCheck("ok", width, height, digest, gray)
