"""Batched view augmentation: SimCLR-style views for a whole batch in a few tensor ops.

Per-image PIL/torchvision transforms cost far more per image than decoding a
small JPEG, and they starve the trainer (figures: docs/BENCHMARKS.md,
``bench/ingest.py``). Here
every random parameter is still drawn *per sample* (crop box, flip, jitter
factors, grayscale, blur sigma), but the pixels of the whole batch move through
one ``affine_grid``/``grid_sample`` and a handful of broadcast ops, on CPU or GPU.

Colour jitter is torchvision's, per sample: the four ops in a random order drawn
per image, hue shifted in HSV (matches ``adjust_hue`` to 1e-6 on float images).
One difference from torchvision's recipe, on purpose: the crop is a continuous box
bilinear-resampled from the source grid in one step (no integer box, no separate
crop then resize), which is what torchvision does up to interpolation detail.

The random half (``sample_view_params``) and the pixel half
(``apply_view_params``) are separate functions: the parameter distributions are
tested against torchvision's own samplers (``tests/ingest/test_augment_params.py``),
and ``torchvision_recipe`` builds the per-sample pipeline we claim to match.

Each half splits again into geometry and colour, for the streaming feed, where images keep
their own size until they are cropped: ``sample_crop_params`` (box + flip, drawn per sample
against that sample's own width/height) runs in the Ray Data stage next to the decoder, which
cuts ``crop_box_pixels`` out of the original image; ``sample_colour_params`` +
``apply_colour_params`` run batched on the training worker's device over the fixed-size
crops. ``sample_view_params`` draws both halves in one fixed order, so the in-memory path
(``augment_batch``) gives the same views as before the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = torch.tensor([0.2989, 0.587, 0.114])  # torchvision rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewRecipe:
    """Parameters of one augmented view; the knobs a sweep varies.

    ``jitter_strength`` is SimCLR's s: brightness/contrast/saturation 0.8*s, hue 0.2*s.
    """

    size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 0.5
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


@dataclass
class ViewParams:
    """Per-sample random parameters of one view, drawn apart from the pixels.

    Kept separate so a test can compare their distributions with torchvision's
    per-sample recipe, and so a caller can log or replay the exact views.
    Crop sizes are fractions of the source width/height; crop centres are in
    ``[-1, 1]`` grid coordinates (``affine_grid`` convention).
    """

    crop_w: torch.Tensor
    crop_h: torch.Tensor
    center_x: torch.Tensor
    center_y: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: apply colour jitter at all
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # fraction of a turn, in [-0.5, 0.5]
    grayscale: torch.Tensor  # bool
    blur: torch.Tensor  # bool
    sigma: torch.Tensor  # blur sigma in output pixels
    fallback: torch.Tensor  # bool: no try was valid, the central clamped-ratio crop was used
    #: [N, 4] order of the jitter ops per sample (0 brightness, 1 contrast, 2 saturation, 3 hue), as
    #: ``ColorJitter``'s per-call ``randperm(4)``; None applies them in that fixed order
    jitter_order: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.crop_w.shape[0])


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _jitter_range(strength: float) -> tuple[float, float]:
    """torchvision ColorJitter's factor interval for brightness/contrast/saturation."""
    return max(0.0, 1.0 - strength), 1.0 + strength


def _sample_crop_boxes(n: int, recipe: ViewRecipe, aspect: float | torch.Tensor,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop (width, height) as fractions of the source side, and a fallback flag.

    Mirrors torchvision's ``RandomResizedCrop.get_params``: area ~ U(scale),
    log-ratio ~ U(log ratio), up to 10 tries per image; an image with no valid
    try gets torchvision's fallback, the central crop with the ratio clamped to
    the allowed range (the full image when its own ratio is allowed).
    ``aspect`` is the source width / height in pixels: one number for the whole batch,
    or one per sample (the streaming feed, where every image keeps its own shape).
    The random draws do not depend on ``aspect``, so a sample's box depends only on the
    generator state and its own aspect, never on its neighbours'.
    """
    tries = 10
    lo, hi = recipe.crop_scale
    area = lo + (hi - lo) * torch.rand(n, tries, generator=gen)
    log_lo, log_hi = math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=gen))
    a = aspect.to(torch.float32) if isinstance(aspect, torch.Tensor) else torch.full((n,), float(aspect))
    # fractions of source width and height; ratio is width/height in pixels
    w = torch.sqrt(area * ratio / a[:, None])
    h = torch.sqrt(area / ratio * a[:, None])
    valid = (w <= 1.0) & (h <= 1.0)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((n,), -1))
    idx = first.clamp(min=0)
    w_sel = w.gather(1, idx[:, None]).squeeze(1)
    h_sel = h.gather(1, idx[:, None]).squeeze(1)
    fallback = first < 0
    r_lo, r_hi = recipe.crop_ratio
    # too tall: full width, height cut to the smallest ratio; too wide: full height, width cut
    # to the largest ratio; otherwise the whole image
    fb_w = torch.where(a > r_hi, r_hi / a, torch.ones_like(a))
    fb_h = torch.where(a < r_lo, a / r_lo, torch.ones_like(a))
    w_sel = torch.where(fallback, fb_w, w_sel)
    h_sel = torch.where(fallback, fb_h, h_sel)
    return w_sel, h_sel, fallback


@dataclass
class CropParams:
    """The geometric half of a view: crop box (fractions of the source side, centre in ``[-1, 1]``
    grid coordinates) and the horizontal flip, per sample."""

    crop_w: torch.Tensor
    crop_h: torch.Tensor
    center_x: torch.Tensor
    center_y: torch.Tensor
    flip: torch.Tensor  # bool
    fallback: torch.Tensor  # bool: no try was valid, the central clamped-ratio crop was used

    def __len__(self) -> int:
        return int(self.crop_w.shape[0])


@dataclass
class ColourParams:
    """The photometric half of a view, per sample (see ``ViewParams`` for the fields)."""

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    jitter_order: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.jitter.shape[0])


def sample_crop_params(n: int, recipe: ViewRecipe, aspect: float | torch.Tensor = 1.0,
                       generator: torch.Generator | None = None) -> CropParams:
    """Crop box and flip of ``n`` views: ``RandomResizedCrop.get_params`` + ``RandomHorizontalFlip``.

    ``aspect``: source width / height, one for all or a tensor with one per sample.
    """
    gen = generator if generator is not None else torch.default_generator
    cw, ch, fallback = _sample_crop_boxes(n, recipe, aspect, gen)
    # uniform position over the offsets that keep the box inside; the fallback is central
    cx = torch.where(fallback, torch.zeros(n), (torch.rand(n, generator=gen) * 2 - 1) * (1 - cw))
    cy = torch.where(fallback, torch.zeros(n), (torch.rand(n, generator=gen) * 2 - 1) * (1 - ch))
    flip = torch.rand(n, generator=gen) < recipe.flip_prob
    return CropParams(cw, ch, cx, cy, flip, fallback)


def sample_colour_params(n: int, recipe: ViewRecipe, generator: torch.Generator | None = None) -> ColourParams:
    """Colour jitter factors and order, grayscale and blur gates of ``n`` views (``ColorJitter.get_params``,
    the Bernoulli gates of ``RandomApply`` / ``RandomGrayscale``)."""
    gen = generator if generator is not None else torch.default_generator
    s = recipe.jitter_strength
    jitter = torch.rand(n, generator=gen) < recipe.jitter_prob if s > 0 else torch.zeros(n, dtype=torch.bool)
    brightness = _uniform(n, *_jitter_range(0.8 * s), gen)
    contrast = _uniform(n, *_jitter_range(0.8 * s), gen)
    saturation = _uniform(n, *_jitter_range(0.8 * s), gen)
    hue_max = min(0.5, 0.2 * s)
    hue = _uniform(n, -hue_max, hue_max, gen)
    grayscale = torch.rand(n, generator=gen) < recipe.grayscale_prob
    blur = torch.rand(n, generator=gen) < recipe.blur_prob
    sigma = _uniform(n, recipe.blur_sigma[0], recipe.blur_sigma[1], gen).clamp(min=0.1)
    jitter_order = torch.rand(n, 4, generator=gen).argsort(dim=1)
    return ColourParams(jitter, brightness, contrast, saturation, hue, grayscale, blur, sigma, jitter_order)


def sample_view_params(n: int, recipe: ViewRecipe, aspect: float = 1.0, generator: torch.Generator | None = None) -> ViewParams:
    """Draw the random parameters of ``n`` views, one set per sample.

    The distributions are torchvision's SimCLR recipe (see ``torchvision_recipe``):
    crop as ``RandomResizedCrop.get_params``, crop position uniform over the
    valid offsets, flip / jitter / grayscale / blur each a Bernoulli with the
    recipe's probability, jitter factors uniform as in ``ColorJitter.get_params``.
    Geometry is drawn first, then colour, from the same generator.
    """
    gen = generator if generator is not None else torch.default_generator
    crop = sample_crop_params(n, recipe, aspect, gen)
    colour = sample_colour_params(n, recipe, gen)
    return ViewParams(crop.crop_w, crop.crop_h, crop.center_x, crop.center_y, crop.flip, colour.jitter,
                      colour.brightness, colour.contrast, colour.saturation, colour.hue, colour.grayscale,
                      colour.blur, colour.sigma, crop.fallback, colour.jitter_order)


def crop_box_pixels(params: CropParams | ViewParams, i: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Sample ``i``'s crop as a (left, top, right, bottom) box in source pixels (PIL's ``box``).

    The same box that ``apply_crop_params`` resamples on the grid: width ``crop_w * width``,
    centred at ``(center_x + 1) / 2 * width``; continuous, as the batched path.
    """
    bw, bh = float(params.crop_w[i]) * width, float(params.crop_h[i]) * height
    cx, cy = (float(params.center_x[i]) + 1) / 2 * width, (float(params.center_y[i]) + 1) / 2 * height
    return cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB batch [N,3,H,W] -> [N,1,H,W]."""
    return (x * _LUMA.to(x)[None, :, None, None]).sum(1, keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB batch [N,3,H,W] in [0, 1] -> hue (turns), saturation, value, each [N,H,W]."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    grey = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    sat = chroma / torch.where(grey, ones, maxc)
    div = torch.where(grey, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hue = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
           + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return torch.remainder(hue / 6.0, 1.0), sat, maxc


def _hsv_to_rgb(hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_rgb_to_hsv``: the hexcone sector picks which of v, p, q, t each channel takes."""
    h6 = hue * 6.0
    sector = torch.floor(h6)
    frac = h6 - sector
    sector = sector.to(torch.int64) % 6
    p = (val * (1 - sat)).clamp(0, 1)
    q = (val * (1 - sat * frac)).clamp(0, 1)
    t = (val * (1 - sat * (1 - frac))).clamp(0, 1)
    table = torch.stack([torch.stack([val, q, p, p, t, val], 1),
                         torch.stack([t, val, val, q, p, p], 1),
                         torch.stack([p, p, t, val, val, q], 1)], 1)  # [N, 3, 6, H, W]
    return table.gather(2, sector[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def _shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Shift hue by ``turns`` (fraction of a full turn, per sample) in HSV, as torchvision's ``adjust_hue``."""
    hue, sat, val = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(hue + turns[:, None, None], 1.0), sat, val)


def _colour_jitter(x: torch.Tensor, params: ColourParams | ViewParams, gather_rows: bool | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-sample factors, in each sample's own order.

    Four rounds; in round k every sample gets the op its ``jitter_order[:, k]`` names.
    On a CPU (``gather_rows``) each op runs on just the rows that drew it, so each op
    runs once per sample in all. On a GPU every op runs on the whole batch and a
    ``where`` selects: 4x the arithmetic, but no host sync per op (``nonzero`` waits
    for the device 16 times a view). Both give the same pixels.
    """
    c = x.shape[1]
    dev, dt = x.device, x.dtype

    def brightness(j: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (j * f[:, None, None, None]).clamp(0, 1)

    def contrast(j: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        mean = (_gray(j) if c == 3 else j).mean(dim=(1, 2, 3), keepdim=True)
        return ((j - mean) * f[:, None, None, None] + mean).clamp(0, 1)

    def saturation(j: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if c != 3:
            return j
        g = _gray(j)
        return ((j - g) * f[:, None, None, None] + g).clamp(0, 1)

    def hue(j: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return _shift_hue(j, f) if c == 3 else j

    ops = ((brightness, params.brightness), (contrast, params.contrast),
           (saturation, params.saturation), (hue, params.hue))
    if params.jitter_order is None:
        for op, factor in ops:
            x = op(x, factor.to(dev, dt))
        return x
    order = params.jitter_order.to(dev)
    factors = [factor.to(dev, dt) for _, factor in ops]
    if gather_rows is None:
        gather_rows = dev.type == "cpu"
    for k in range(4):
        if gather_rows:  # every row draws exactly one op per round, so each row of ``out`` is written once
            out = torch.empty_like(x)
            for index, (op, _) in enumerate(ops):
                rows = (order[:, k] == index).nonzero().squeeze(1)
                if rows.numel():
                    out.index_copy_(0, rows, op(x.index_select(0, rows), factors[index][rows]))
            x = out
        else:
            out = x
            for index, (op, _) in enumerate(ops):
                out = torch.where((order[:, k] == index)[:, None, None, None], op(x, factors[index]), out)
            x = out
    return x


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (in pixels)."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, (min(h, w) - 1) // 2) or 1
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(x) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [N, K]
    k = kernel.repeat_interleave(c, 0)  # [N*C, K]
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def apply_crop_params(images: torch.Tensor, params: CropParams | ViewParams, size: int) -> torch.Tensor:
    """Random resized crop + horizontal flip as one affine resample: float [N, C, size, size] in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    n, c, h, w = x.shape
    if len(params) != n:
        raise ValueError(f"{len(params)} parameter sets for {n} images")
    sign = torch.where(params.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = params.crop_w * sign
    theta[:, 0, 2] = params.center_x
    theta[:, 1, 1] = params.crop_h
    theta[:, 1, 2] = params.center_y
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def apply_colour_params(images: torch.Tensor, params: ColourParams | ViewParams, recipe: ViewRecipe) -> torch.Tensor:
    """Colour jitter, grayscale, blur and normalisation of fixed-size views, batched on their device.

    Args:
        images: uint8 [N, C, H, W] or float in [0, 1] (e.g. ``apply_crop_params``' output).
        params: one parameter set per image.
        recipe: gives the normalisation.

    Returns:
        float32 [N, C, H, W], normalised with ``recipe.mean``/``recipe.std``.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    n, c = x.shape[:2]
    if len(params) != n:
        raise ValueError(f"{len(params)} parameter sets for {n} images")
    dev = x.device

    def per_sample(t: torch.Tensor) -> torch.Tensor:
        return t.to(dev, x.dtype)[:, None, None, None]

    if bool(params.jitter.any()):
        x = torch.where(per_sample(params.jitter) > 0, _colour_jitter(x, params), x)

    if c == 3 and bool(params.grayscale.any()):
        x = torch.where(per_sample(params.grayscale) > 0, _gray(x).expand(-1, 3, -1, -1), x)

    if bool(params.blur.any()):
        # sigma is in pixels of the output view (SimCLR's 0.1-2.0 is for 224 px views)
        blurred = _gaussian_blur(x, params.sigma.to(dev))
        x = torch.where(per_sample(params.blur) > 0, blurred, x)

    mean_t = torch.tensor(recipe.mean, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(recipe.std, device=dev).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def apply_view_params(images: torch.Tensor, params: ViewParams, recipe: ViewRecipe) -> torch.Tensor:
    """Render the views described by ``params``: the deterministic half of ``augment_batch``.

    Args:
        images: uint8 [N, C, H, W] (C = 1 or 3) or float in [0, 1].
        params: one parameter set per image (``sample_view_params``).
        recipe: gives the output size and the normalisation.

    Returns:
        float32 [N, C, size, size], normalised with ``recipe.mean``/``recipe.std``.
    """
    return apply_colour_params(apply_crop_params(images, params, recipe.size), params, recipe)


def colour_views(crops: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """The worker's half of a streamed view: per-sample colour parameters, batched pixels.

    ``crops``: uint8 [N, C, size, size] already cropped and flipped (the Ray Data stage), on
    any device; the parameters are drawn on the CPU from ``generator``.
    """
    return apply_colour_params(crops, sample_colour_params(len(crops), recipe, generator), recipe)


def augment_batch(images: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view of every image: per-sample parameters, batched pixels.

    Args:
        images: uint8 [N, C, H, W] (C = 1 or 3) or float in [0, 1].
        recipe: view parameters.
        generator: RNG for the per-sample parameters (CPU generator).

    Returns:
        float32 [N, C, size, size], normalised with ``recipe.mean``/``recipe.std``.
    """
    n, _, h, w = images.shape
    params = sample_view_params(n, recipe, aspect=w / h, generator=generator)
    return apply_view_params(images, params, recipe)


def torchvision_recipe(recipe: ViewRecipe):
    """The per-sample ``torchvision.transforms.v2`` pipeline that ``augment_batch`` vectorises.

    Used as the reference for the parameter-distribution test and as the
    DataLoader baseline in ``bench/ingest.py``. Accepts a PIL image or a uint8
    tensor [C, H, W]; returns float32 [C, size, size] normalised like ours.
    """
    from torchvision.transforms import v2

    s = recipe.jitter_strength
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(recipe.size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(p=recipe.flip_prob),
    ]
    if s > 0 and recipe.jitter_prob > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s))], p=recipe.jitter_prob))
    if recipe.grayscale_prob > 0:
        steps.append(v2.RandomGrayscale(p=recipe.grayscale_prob))
    if recipe.blur_prob > 0:
        kernel = 2 * max(1, int(math.ceil(3 * recipe.blur_sigma[1]))) + 1
        kernel = min(kernel, recipe.size - 1 if recipe.size % 2 == 0 else recipe.size)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=recipe.blur_sigma)], p=recipe.blur_prob))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(recipe.mean), list(recipe.std))]
    return v2.Compose(steps)


def torchvision_views(images: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """One view of every image, rendered image by image by ``torchvision_recipe``: the reference renderer.

    Slower than ``augment_batch`` (a Python call chain per image) but pixel for pixel
    torchvision's recipe, integer crop boxes and uint8 rounding between ops included.
    It exists so a run can rule the batched renderer's remaining approximations in
    or out (``augment.renderer=torchvision``). torchvision draws
    from the global RNG, so it is seeded from ``generator`` inside a forked RNG
    state: the views are reproducible and the caller's global RNG is untouched.

    Args:
        images: uint8 [N, C, H, W] on any device (rendered on the CPU).
        recipe: view parameters.
        generator: RNG that seeds this batch's views (CPU generator).

    Returns:
        float32 [N, C, size, size] on the images' device, normalised like ``augment_batch``.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"torchvision_views takes uint8 images, got {images.dtype}")
    gen = generator if generator is not None else torch.default_generator
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    pipeline = _cached_torchvision_recipe(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = torch.stack([pipeline(image).as_subclass(torch.Tensor) for image in images.cpu()])
    return views.to(images.device)


_TORCHVISION_PIPELINES: dict[ViewRecipe, object] = {}


def _cached_torchvision_recipe(recipe: ViewRecipe):
    """Build each recipe's torchvision pipeline once (the recipe is frozen, so hashable)."""
    if recipe not in _TORCHVISION_PIPELINES:
        _TORCHVISION_PIPELINES[recipe] = torchvision_recipe(recipe)
    return _TORCHVISION_PIPELINES[recipe]


#: view renderers by ``augment.renderer`` name: same signature, same parameter distributions
RENDERERS = {"batched": augment_batch, "torchvision": torchvision_views}


def normalize_batch(images: torch.Tensor, recipe: ViewRecipe) -> torch.Tensor:
    """The un-augmented evaluation view: resize to ``recipe.size`` and normalise."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != recipe.size or x.shape[-2] != recipe.size:
        x = F.interpolate(x, size=(recipe.size, recipe.size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(recipe.mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(recipe.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
