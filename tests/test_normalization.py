"""``data.mean`` / ``data.std``: the input normalisation is a validated config key that reaches the
training views and the evaluation view (default 0.5 per channel, as before the key existed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.config import ConfigError, load_config
from pipelines.eval_stage import embed
from pipelines.models import view_recipe
from ssl_models.augment import RENDERERS, sample_view_params, apply_view_params

IMAGENET = ["data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]"]


def test_default_is_half_per_channel() -> None:
    for channels in (1, 3):
        recipe = view_recipe(load_config(None, [f"data.channels={channels}"]))
        assert recipe.mean == (0.5,) * channels and recipe.std == (0.5,) * channels


def test_imagenet_normalisation_reaches_the_evaluation_view() -> None:
    cfg = load_config(None, ["data.channels=3", "data.image_size=8", *IMAGENET])
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    features = embed(nn.Flatten(), images, cfg)  # the identity "backbone": features are the normalised pixels
    x = images.astype(np.float32) / 255.0
    expected = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(features, expected.transpose(0, 3, 1, 2).reshape(4, -1), atol=1e-5)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_imagenet_normalisation_reaches_the_training_views(renderer: str) -> None:
    """A flat grey image with no colour augmentation comes out of either renderer as (grey - mean) / std."""
    cfg = load_config(None, ["data.channels=3", "data.image_size=8", *IMAGENET, f"augment.renderer={renderer}",
                             "augment.jitter_prob=0", "augment.grayscale_prob=0", "augment.blur_prob=0"])
    recipe = view_recipe(cfg)
    images = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    views = RENDERERS[renderer](images, recipe, torch.Generator().manual_seed(0))
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(views.mean(dim=(0, 2, 3)), expected, atol=1e-4, rtol=0)
    batched = apply_view_params(images, sample_view_params(2, recipe, generator=torch.Generator()), recipe)
    torch.testing.assert_close(batched.mean(dim=(0, 2, 3)), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, key, allowed", [
    (["data.channels=3", "data.mean=[0.5]"], "data.mean", "a list of 3 numbers"),
    (["data.channels=1", "data.std=[0.2, 0.2, 0.2]"], "data.std", "a list of 1 numbers"),
    (["data.channels=3", "data.std=[0.2, 0.0, 0.2]"], "data.std", "> 0"),
    (["data.channels=3", "data.std=[0.2, -1, 0.2]"], "data.std", "> 0"),
    (["data.channels=1", "data.mean=.nan"], "data.mean", "a list of numbers"),
    (["data.channels=1", "data.mean=[.nan]"], "data.mean", "finite"),
    (["data.channels=1", "data.mean=0.5"], "data.mean", "a list of numbers"),
])
def test_bad_normalisation_names_the_key(overrides: list[str], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert f"'{key}'" in str(err.value) and allowed in str(err.value)
