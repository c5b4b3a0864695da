"""The batched views draw their random parameters from the same distributions as
torchvision's per-sample SimCLR recipe (``torchvision_recipe``).

We sample many parameter sets from ``sample_view_params`` and from torchvision's
own samplers (``RandomResizedCrop.get_params``, ``ColorJitter.get_params``, the
Bernoulli gates of ``RandomApply``/``RandomHorizontalFlip``/``RandomGrayscale``)
and compare: two-sample KS tests for continuous parameters, binomial bounds for
probabilities. A wrong range, a swapped ratio or a missing rejection loop moves a
KS statistic far past its critical value at these sample sizes.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import v2

from ssl_models.augment import (
    ViewRecipe,
    apply_view_params,
    augment_batch,
    sample_view_params,
    torchvision_recipe,
    torchvision_views,
)

N = 4000
P_MIN = 1e-3  # a false alarm in one of ~20 comparisons stays rare; real mismatches give p ~ 1e-20


def _fallback_box(recipe: ViewRecipe, height: int, width: int) -> tuple[int, int]:
    """torchvision's central fallback crop (width, height) in whole pixels."""
    in_ratio = width / height
    if in_ratio < recipe.crop_ratio[0]:
        return width, int(round(width / recipe.crop_ratio[0]))
    if in_ratio > recipe.crop_ratio[1]:
        return int(round(height * recipe.crop_ratio[1])), height
    return width, height


def _ours_crop_pixels(recipe: ViewRecipe, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    p = sample_view_params(N, recipe, aspect=width / height, generator=torch.Generator().manual_seed(seed))
    # whole pixels, as torchvision rounds them: point masses (the fallback crop) then line up
    w, h = (p.crop_w.double() * width).round().numpy(), (p.crop_h.double() * height).round().numpy()
    # a free range of >= 50 px (torchvision's integer offsets are then near-continuous), and not
    # the central fallback crop, whose offset torchvision floors to a whole pixel
    movable = (w <= width - 50) & ~p.fallback.numpy()
    # position as a fraction of the free range: uniform over [0, 1] for both samplers
    pos = ((p.center_x / (1 - p.crop_w).clamp(min=1e-9) + 1) / 2).numpy()
    return {"area": w * h / (width * height), "log_ratio": np.log(w / h), "pos": pos[movable],
            "raw_area": (p.crop_w * p.crop_h).numpy(),
            "fallback_area": float(np.prod(_fallback_box(recipe, height, width))) / (width * height),
            "raw_ratio": (p.crop_w / p.crop_h).numpy() * width / height}


def _torchvision_crop_pixels(recipe: ViewRecipe, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    img = torch.zeros(1, height, width, dtype=torch.uint8)
    boxes = np.array([T.RandomResizedCrop.get_params(img, list(recipe.crop_scale), list(recipe.crop_ratio)) for _ in range(N)])
    i, j, h, w = boxes.T.astype(float)
    fallback = (w == _fallback_box(recipe, height, width)[0]) & (h == _fallback_box(recipe, height, width)[1])
    movable = (w <= width - 50) & ~fallback
    return {"area": w * h / (width * height), "log_ratio": np.log(w / h), "pos": (j / np.maximum(width - w, 1))[movable]}


@pytest.mark.parametrize("height,width", [(1000, 1000), (500, 1000), (1000, 400)])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0)])
def test_crop_scale_ratio_and_position_match_torchvision(height: int, width: int, scale: tuple[float, float]) -> None:
    """Non-square sources exercise the 10-try rejection loop and the clamped-ratio fallback."""
    recipe = ViewRecipe(crop_scale=scale)
    ours = _ours_crop_pixels(recipe, height, width, seed=1)
    ref = _torchvision_crop_pixels(recipe, height, width, seed=2)
    for name in ("area", "log_ratio", "pos"):
        if min(len(ours[name]), len(ref[name])) < 200:
            continue  # nearly every crop is the fallback: no free range to compare
        result = stats.ks_2samp(ours[name], ref[name])
        assert result.pvalue > P_MIN, f"{name}: KS {result.statistic:.3f} p={result.pvalue:.2g} ({height}x{width}, scale {scale})"
    # the ranges themselves (rounding to whole pixels in torchvision aside)
    # the ranges themselves, before pixel rounding: area within scale unless it is the fallback
    # crop, pixel ratio always within the ratio range (the fallback clamps it there too)
    assert ours["raw_area"].max() <= 1 + 1e-6
    assert ours["raw_area"].min() >= min(scale[0], ours["fallback_area"]) - 1e-6
    assert ours["raw_ratio"].min() >= 3 / 4 - 1e-5 and ours["raw_ratio"].max() <= 4 / 3 + 1e-5


def test_colour_jitter_factors_match_torchvision() -> None:
    recipe = ViewRecipe(jitter_strength=1.0)  # brightness 0.8, hue 0.2
    p = sample_view_params(N, recipe, generator=torch.Generator().manual_seed(3))
    jitter = v2.ColorJitter(0.8, 0.8, 0.8, 0.2)
    torch.manual_seed(4)
    ref = np.array([T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)[1:]
                    for _ in range(N)])
    for col, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        result = stats.ks_2samp(getattr(p, name).numpy(), ref[:, col])
        assert result.pvalue > P_MIN, f"{name}: KS {result.statistic:.3f} p={result.pvalue:.2g}"


def test_strong_jitter_keeps_torchvisions_interval_not_a_clamped_spike() -> None:
    """s = 1.5: brightness interval is [0, 2.2]; a clamp at 0 would put ~9 % of the mass on 0."""
    p = sample_view_params(N, ViewRecipe(jitter_strength=1.5), generator=torch.Generator().manual_seed(5))
    b = p.brightness.numpy()
    assert (b == 0).mean() < 0.001
    assert stats.kstest(b, stats.uniform(0, 2.2).cdf).pvalue > P_MIN


@pytest.mark.parametrize(
    "field,prob,recipe",
    [
        ("flip", 0.5, ViewRecipe()),
        ("jitter", 0.8, ViewRecipe()),
        ("grayscale", 0.2, ViewRecipe()),
        ("blur", 0.5, ViewRecipe(blur_prob=0.5)),
        ("flip", 0.0, ViewRecipe(flip_prob=0.0)),
    ],
)
def test_gate_probabilities_match_the_recipe(field: str, prob: float, recipe: ViewRecipe) -> None:
    """Each gate is a Bernoulli(p), as RandomApply / RandomHorizontalFlip / RandomGrayscale draw it."""
    p = sample_view_params(N, recipe, generator=torch.Generator().manual_seed(6))
    hits = int(getattr(p, field).sum())
    assert stats.binomtest(hits, N, prob).pvalue > P_MIN if 0 < prob < 1 else hits == 0


def test_torchvision_recipe_gates_fire_at_the_same_rate() -> None:
    """Close the loop on the reference pipeline itself: its jitter gate is RandomApply(p=0.8)."""
    recipe = ViewRecipe(jitter_strength=1.0)
    pipe = torchvision_recipe(recipe)
    jitter_gate = next(t for t in pipe.transforms if isinstance(t, v2.RandomApply))
    flip = next(t for t in pipe.transforms if isinstance(t, v2.RandomHorizontalFlip))
    crop = next(t for t in pipe.transforms if isinstance(t, v2.RandomResizedCrop))
    gray = next(t for t in pipe.transforms if isinstance(t, v2.RandomGrayscale))
    assert jitter_gate.p == recipe.jitter_prob and flip.p == recipe.flip_prob and gray.p == recipe.grayscale_prob
    assert tuple(crop.scale) == recipe.crop_scale and tuple(crop.ratio) == recipe.crop_ratio
    out = pipe(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_apply_renders_the_parameters_it_is_given() -> None:
    """Full-image crop without jitter is a resize; the flip bit mirrors it exactly."""
    recipe = ViewRecipe(size=16, mean=(0.0,), std=(1.0,))
    images = torch.rand(2, 3, 16, 16)
    p = sample_view_params(2, recipe, generator=torch.Generator().manual_seed(7))
    for name in ("crop_w", "crop_h"):
        setattr(p, name, torch.ones(2))
    for name in ("center_x", "center_y"):
        setattr(p, name, torch.zeros(2))
    for name in ("jitter", "grayscale", "blur"):
        setattr(p, name, torch.zeros(2, dtype=torch.bool))
    p.flip = torch.tensor([False, True])
    out = apply_view_params(images, p, recipe)
    torch.testing.assert_close(out[0], images[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], images[1].flip(-1), atol=1e-5, rtol=0)


def test_augment_batch_is_reproducible_and_varies_per_sample() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).expand(8, 3, 32, 32).clone()
    images[:] = images[0]  # the same picture 8 times: different outputs prove per-sample parameters
    a = augment_batch(images, ViewRecipe(), torch.Generator().manual_seed(0))
    b = augment_batch(images, ViewRecipe(), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == (8, 3, 32, 32)
    distinct = {tuple(v.flatten()[:64].tolist()) for v in a}
    assert len(distinct) == 8


def test_torchvision_renderer_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    """The reference renderer seeds torchvision from the caller's generator inside a forked RNG state."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    recipe = ViewRecipe(flip_prob=0.5, grayscale_prob=0.2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = torchvision_views(images, recipe, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)
    b = torchvision_views(images, recipe, torch.Generator().manual_seed(1))
    c = torchvision_views(images, recipe, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert -1.0 - 1e-6 <= float(a.min()) and float(a.max()) <= 1.0 + 1e-6  # normalised with mean 0.5, std 0.5


def test_torchvision_renderer_is_the_recipe_applied_image_by_image() -> None:
    """Same seed into torchvision's own pipeline, one image at a time: the same pixels."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    recipe = ViewRecipe(flip_prob=0.5, grayscale_prob=0.2)
    gen = torch.Generator().manual_seed(7)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(7)))
    ours = torchvision_views(images, recipe, gen)
    pipeline = torchvision_recipe(recipe)
    torch.manual_seed(seed)
    theirs = torch.stack([pipeline(image) for image in images])
    torch.testing.assert_close(ours, theirs.as_subclass(torch.Tensor), atol=0, rtol=0)


def test_torchvision_renderer_refuses_float_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        torchvision_views(torch.rand(2, 3, 32, 32), ViewRecipe())


def test_batched_colour_jitter_is_torchvisions_ops_in_each_samples_order() -> None:
    """Per sample: torchvision's adjust_* functionals with the same factors, in that sample's drawn order."""
    from torchvision.transforms.v2 import functional as TF

    n = 24
    recipe = ViewRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=1.0,
                        jitter_strength=1.0, grayscale_prob=0.0)
    images = torch.rand(n, 3, 16, 16)
    params = sample_view_params(n, recipe, generator=torch.Generator().manual_seed(3))
    assert len({tuple(o.tolist()) for o in params.jitter_order}) > 6  # orders really vary per sample
    ours = apply_view_params(images, params, ViewRecipe(size=16, mean=(0.0,), std=(1.0,)))
    ops = [
        lambda x, i: TF.adjust_brightness(x, float(params.brightness[i])),
        lambda x, i: TF.adjust_contrast(x, float(params.contrast[i])),
        lambda x, i: TF.adjust_saturation(x, float(params.saturation[i])),
        lambda x, i: TF.adjust_hue(x, float(params.hue[i])),
    ]
    for i in range(n):
        ref = images[i]
        for op in params.jitter_order[i].tolist():
            ref = ops[op](ref, i)
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=0)


def test_colour_jitter_row_gather_and_whole_batch_select_give_the_same_pixels() -> None:
    """The CPU path (ops on the rows that drew them) and the GPU path (every op, then where) agree."""
    from ssl_models.augment import _colour_jitter

    recipe = ViewRecipe(jitter_prob=1.0, jitter_strength=1.0)
    params = sample_view_params(32, recipe, generator=torch.Generator().manual_seed(5))
    images = torch.rand(32, 3, 8, 8)
    gathered = _colour_jitter(images, params, gather_rows=True)
    selected = _colour_jitter(images, params, gather_rows=False)
    torch.testing.assert_close(gathered, selected, atol=1e-6, rtol=0)
    assert not torch.allclose(gathered, images)  # the jitter did something
