"""Image decoding for every stage: header check first, high bit depth scaled (never clipped), 8-bit out.

Every path from encoded bytes to pixels goes through ``decode_image``, so validation, curation,
training views and evaluation see the same pixels:

- The pixel count is read from the header and checked before any pixel is decoded, so a
  decompression bomb costs a few bytes of parsing (``max_pixels``).
- JPEGs can be decoded reduced (``draft``): PIL's decoder then scales by 1/2, 1/4 or 1/8 in
  the DCT domain, several times faster than a full decode followed by a resize, whenever the
  caller needs fewer pixels than the file holds.
- 16-bit integer and float images (medical, SAR/EO archives: PIL modes ``I;16*``, ``I``, ``F``)
  are mapped to 0..255 *per image*, by ``intensity``:

  * ``full_range``: the image's own [min, max] -> [0, 255]. A 12-bit scan stored in a 16-bit
    container (values 0..4000) keeps all 256 output levels; dividing by 65535 would leave 16,
    and PIL's own ``convert("L")`` saturates everything above 255.
  * ``percentile``: the image's [0.5, 99.5] percentiles -> [0, 255], values outside clipped.
    The usual choice for SAR (speckle) and CT/MR, where a few extreme pixels would otherwise
    compress the rest of the range into a handful of levels.

  8-bit images are never stretched: their values are already the intended display range.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Literal

import numpy as np
from PIL import Image

Intensity = Literal["full_range", "percentile"]
INTENSITY_MODES: tuple[str, ...] = ("full_range", "percentile")
#: per-image percentiles of ``percentile`` scaling
PERCENTILES = (0.5, 99.5)
#: PIL modes whose samples do not fit in 8 bits: scaled by ``intensity`` instead of converted
HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;32", "I;32L", "I;32B", "F;32"})
#: same default as ``ValidationRules.max_pixels``
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLarge(ValueError):
    """The header announces more pixels than allowed; nothing was decoded."""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded bytes lazily and refuse, from the header alone, images over ``max_pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    if im.size[0] * im.size[1] > max_pixels:
        raise ImageTooLarge(f"image of {im.size[0]}x{im.size[1]} pixels is over the {max_pixels} pixel limit")
    return im


def scale_to_uint8(values: np.ndarray, intensity: Intensity = "full_range") -> np.ndarray:
    """Map a high-bit-depth array to uint8 by ``intensity`` (see the module docstring).

    A flat image (all values equal after the chosen range) maps to 0: callers that need
    to reject it (curation's ``low_variance``) see a zero standard deviation.
    """
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():  # NaN/inf in float rasters (no-data): the lowest value, not a crash
        x = np.where(finite, x, np.nan)
    if intensity == "percentile":
        lo, hi = np.nanpercentile(x, PERCENTILES) if finite.any() else (0.0, 0.0)
    elif intensity == "full_range":
        lo, hi = (np.nanmin(x), np.nanmax(x)) if finite.any() else (0.0, 0.0)
    else:
        raise ValueError(f"unknown intensity scaling {intensity!r}; use one of {', '.join(INTENSITY_MODES)}")
    x = np.nan_to_num(x, nan=lo)
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_8bit(im: Image.Image, channels: int, intensity: Intensity = "full_range") -> Image.Image:
    """A decoded image as 8-bit ``L`` (channels 1) or ``RGB`` (channels 3).

    High-depth modes go through ``scale_to_uint8``; everything else (palette, RGBA, CMYK,
    1-bit, LA, YCbCr...) through PIL's own conversion, as before.
    """
    if im.mode in HIGH_DEPTH_MODES:
        gray = Image.fromarray(scale_to_uint8(np.asarray(im), intensity), mode="L")
        return gray if channels == 1 else gray.convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def decode_image(data: bytes, channels: int, *, intensity: Intensity = "full_range",
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode to an 8-bit ``L``/``RGB`` PIL image at (about) its own size.

    ``draft_size`` (width, height): the caller needs at least this many pixels; a JPEG is then
    decoded at the smallest 1/2, 1/4 or 1/8 reduction that still covers it. Other formats
    ignore it. Raises ``ImageTooLarge`` before decoding an image over ``max_pixels``; any other
    decoder failure propagates (``OSError``, ``ValueError``...).
    """
    im = open_image(data, max_pixels)
    if draft_size is not None and im.format == "JPEG":
        im.draft("L" if channels == 1 else "RGB", (max(1, int(draft_size[0])), max(1, int(draft_size[1]))))
    im.load()
    return to_8bit(im, channels, intensity)


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a ``width`` x ``height`` image, as a PIL box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_to_array(data: bytes, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                    intensity: Intensity = "full_range") -> np.ndarray:
    """The fixed-size evaluation view: uint8 [size, size, channels], aspect ratio kept.

    The short side is resized to ``size`` and the centre square kept (torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``, done as one resample of the centre box), so a
    wide or tall image is cropped, never squashed. For the small square images of CIFAR and
    MNIST at their own size it is the identity. JPEGs are decoded reduced when the short side
    allows it.
    """
    width, height = open_image(data, max_pixels).size  # header only: the pixel check happens here
    short = max(1, min(width, height))
    draft = (math.ceil(size * width / short), math.ceil(size * height / short))
    im = decode_image(data, channels, intensity=intensity, max_pixels=max_pixels, draft_size=draft)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=centre_square_box(*im.size))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr
