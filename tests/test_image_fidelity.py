"""16-bit images keep their grey levels (scaled per image, never clipped), and ``data.intensity`` reaches
every decode: curation's check, the training feed, the evaluation sets and the monitor's samples."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.decode import decode_image
from curation.ingest import decode_batch
from curation.validate import ValidationRules, check_image


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _gradient(top: int, dtype: type) -> np.ndarray:
    return np.tile(np.linspace(0, top, 512).round().astype(dtype), (16, 1))


GRADIENTS = {
    "8-bit PNG 0..255": _encode(_gradient(255, np.uint8), "PNG"),
    "12-bit PNG 0..4000 (16-bit container)": _encode(_gradient(4000, np.uint16), "PNG"),
    "16-bit PNG 0..65535": _encode(_gradient(65535, np.uint16), "PNG"),
    "16-bit TIFF 0..65535": _encode(_gradient(65535, np.uint16), "TIFF"),
}


def _levels(im: Image.Image) -> int:
    return len(np.unique(np.asarray(im)))


@pytest.mark.parametrize("name", sorted(GRADIENTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_grey_levels_of_a_gradient_survive_decoding(name: str, channels: int) -> None:
    data = GRADIENTS[name]
    im = decode_image(data, channels)
    assert im.mode == ("L" if channels == 1 else "RGB") and im.size == (512, 16)
    assert _levels(im) == 256, name  # a 512-step ramp fills all 256 output levels
    row = np.asarray(im.convert("L"))[0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()  # monotone, end to end, nothing clipped


@pytest.mark.parametrize("name", [n for n in sorted(GRADIENTS) if not n.startswith("8-bit")])
def test_plain_pil_conversion_loses_what_the_decoder_keeps(name: str) -> None:
    """What the test above guards against: PIL's own convert saturates values over 255."""
    plain = Image.open(io.BytesIO(GRADIENTS[name])).convert("L")
    assert _levels(plain) < 40, name  # 12-bit: 34 levels, 16-bit: 3
    assert _levels(decode_image(GRADIENTS[name], 1)) == 256


def _hot_pixel_image() -> bytes:
    """A 16-bit scan whose content spans 1000..1200 plus one saturated pixel (a SAR/CT outlier)."""
    x = np.tile(np.linspace(1000, 1200, 192).round().astype(np.uint16), (192, 1))
    x[0, 0] = 65535
    return _encode(x, "PNG")


def test_intensity_choice_reaches_curation_and_the_training_feed() -> None:
    data = _hot_pixel_image()
    # full range: the outlier squashes the content into ~1 grey level -> judged flat; percentile keeps it
    assert check_image(data, ValidationRules(intensity="full_range")).reason == "low_variance"
    assert check_image(data, ValidationRules(intensity="percentile")).reason == "ok"
    batch = {"key": np.array(["a"], dtype=object), "image": np.array([data], dtype=object),
             "label": np.array([-1])}
    full = decode_batch(batch, 32, 1, "full_range")["image"][0]
    pct = decode_batch(batch, 32, 1, "percentile")["image"][0]
    assert full.std() < 3 and pct.std() > 50


def test_a_flat_16_bit_image_is_rejected_as_low_variance() -> None:
    flat = _encode(np.full((32, 32), 3000, np.uint16), "PNG")
    for intensity in ("full_range", "percentile"):
        assert check_image(flat, ValidationRules(intensity=intensity)).reason == "low_variance"


def test_data_intensity_reaches_curation_evaluation_and_the_monitor(ray_session, tmp_path: Path) -> None:
    """The config key, not a default, decides: curate via run_pipeline, the evaluation loader, the
    monitor's sample decoder."""
    from curation.shards import Sample, write_shard
    from pipelines.config import load_config
    from pipelines.eval_stage import load_labelled
    from pipelines.monitor import selected_dataset
    from pipelines.run import RunDir, run_pipeline

    shard = tmp_path / "pool" / "shard-000000.tar"
    rng = np.random.default_rng(0)
    samples = [Sample("hot", _hot_pixel_image(), "png", 0)]
    samples += [Sample(f"n{i:02d}", _encode(rng.integers(0, 255, (32, 32), dtype=np.uint8), "PNG"), "png", 0)
                for i in range(8)]
    write_shard(samples, shard)
    reasons = {}
    for mode in ("full_range", "percentile"):
        cfg = load_config(None, [f"run_dir={tmp_path / mode}", f"data.source={shard.parent}", "data.image_size=32",
                                 f"data.intensity={mode}", "curate.near_dedup=false"])
        run_pipeline(cfg, until="curate")
        import pyarrow.parquet as pq

        manifest = pq.read_table(RunDir(cfg.run_dir).record("curate")["manifest"]).to_pylist()
        reasons[mode] = next(r["reason"] for r in manifest if r["key"] == "hot")
        held = load_labelled([str(shard)], cfg)
        hot = held.images[0]  # sorted by key: "hot" first
        assert (hot.std() > 50) == (mode == "percentile")
        picked = selected_dataset([str(shard)], ["hot"], cfg).take_batch(batch_format="numpy")
        assert (picked["image"][0].std() > 50) == (mode == "percentile")
    assert reasons == {"full_range": "low_variance", "percentile": "ok"}
