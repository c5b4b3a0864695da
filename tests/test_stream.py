"""The streaming feed (data.cache=stream): planned steps, every sample once per epoch, crops cut from
the original image, pruning rounds on the stream, resume inside an epoch, and bad shards counted."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curation.planting import encode_png
from curation.shards import Sample, write_shard
from pipelines.config import load_config
from pipelines.feed import ShardPool, plan_epoch, shard_order
from pipelines.monitor import MonitorSets

SMALL = ["train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16",
         "train.knn_monitor_every=0", "train.batch_size=64"]


def digit_shards(root: Path, images: np.ndarray, labels: np.ndarray, sizes: list[int]) -> list[str]:
    """Tar shards of real MNIST digits (PNG) with the given numbers of samples; keys are unique."""
    root.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for s, n in enumerate(sizes):
        path = root / f"shard-{s:06d}.tar"
        write_shard([Sample(f"s{s}_{i:05d}", encode_png(images[i]), "png", int(labels[i]))
                     for i in range(start, start + n)], path)
        paths.append(str(path))
        start += n
    return paths


def all_keys(paths: list[str]) -> list[str]:
    from curation.ingest import iter_samples

    return [row["key"] for p in paths for row in iter_samples(p) if not row["read_error"]]


def seen(run_dir: Path, epoch: int) -> list[str]:
    """The keys every worker trained on in ``epoch`` (train.record_seen_keys), all workers together."""
    files = sorted((run_dir / "seen_keys").glob(f"epoch_{epoch:06d}_rank_*.parquet"))
    assert files, f"no seen-key record for epoch {epoch}"
    return [k for f in files for k in pq.read_table(f).column("key").to_pylist()]


@pytest.fixture(scope="module")
def uneven_pool(tmp_path_factory, mnist_digits) -> list[str]:
    """400 digits in shards of uneven size, so workers' parts start and end inside shards."""
    images, labels = mnist_digits
    return digit_shards(tmp_path_factory.mktemp("pool"), images, labels, [70, 130, 45, 155])


# --------------------------------------------------------------------------- the plan, without Ray


def test_the_epoch_plan_gives_every_worker_its_exact_share_of_distinct_samples() -> None:
    counts = [70, 130, 45, 155]
    for epoch in range(3):
        order = shard_order(0, epoch, len(counts))
        plans = plan_epoch(counts, order, world=3, per_worker=5 * 21)
        taken = [(seg.shard, pos) for plan in plans for seg in plan for pos in range(seg.start, seg.stop)]
        assert [sum(s.stop - s.start for s in plan) for plan in plans] == [105, 105, 105]
        assert len(set(taken)) == len(taken) == 315  # each planned sample once, 85 of 400 left for this epoch
    assert shard_order(0, 0, 50).tolist() != shard_order(0, 1, 50).tolist()  # reshuffled every epoch
    assert shard_order(0, 1, 50).tolist() == shard_order(0, 1, 50).tolist()  # from the seed alone


# --------------------------------------------------------------------------- training


def test_a_pool_over_the_cache_budget_streams_to_its_planned_steps_reading_every_sample_once(
        ray_session, uneven_pool, tmp_path: Path, capfd) -> None:
    from pipelines.pretrain import pretrain

    pool = ShardPool.count(uneven_pool)
    assert pool.total == 400
    run = tmp_path / "stream"
    cfg = load_config(None, [f"run_dir={run}", "train.num_workers=2", "train.epochs=2", "train.cpus_per_worker=1.0",
                             "data.cache=auto", "data.cache_budget_gb=0.0001", "train.record_seen_keys=true",
                             "data.shuffle_window_batches=2", *SMALL])
    history = pretrain(cfg, pool, run).history
    out = capfd.readouterr().out
    assert "data.cache=auto chose stream" in out  # 400 x 28 x 28 B is over a 0.0001 GiB budget, and it says so

    steps = 400 // 64  # planned from the curated count: 6 steps of 64, 16 samples left each epoch
    assert [h["step"] for h in history] == [steps, 2 * steps]
    pool_keys = set(all_keys(uneven_pool))
    for epoch in (1, 2):
        counts = Counter(seen(run, epoch))
        assert max(counts.values()) == 1  # no sample twice, across both workers
        assert len(counts) == steps * 64 and set(counts) <= pool_keys
        # what is left is the tail of the epoch's order: the last 16 samples of its last shard
        last = shard_order(cfg.seed, epoch - 1, len(uneven_pool))[-1]
        assert pool_keys - set(counts) == set(all_keys([uneven_pool[last]])[-16:])
        assert history[epoch - 1]["samples_seen"] == steps * 64 and history[epoch - 1]["padded_samples"] == 0
    first = pq.read_table(run / "seen_keys" / "epoch_000001_rank_0.parquet").column("key").to_pylist()
    second = pq.read_table(run / "seen_keys" / "epoch_000002_rank_0.parquet").column("key").to_pylist()
    # the shard order is reshuffled every epoch: rank 0's first shuffle window (2 batches of 32) starts with
    # shard 2 in epoch 1 and shard 0 in epoch 2 (shard_order(0, 0|1, 4) = [2, 0, 3, 1] | [0, 2, 3, 1])
    assert {k.split("_")[0] for k in first[:64]} == {"s2", "s0"} and {k.split("_")[0] for k in second[:64]} == {"s0"}
    assert all(h["active_samples"] == 400 for h in history)

    # the in-memory feed plans the same steps from the same pool
    mem = tmp_path / "memory"
    mem_cfg = load_config(None, [f"run_dir={mem}", "train.num_workers=0", "train.epochs=1", "data.cache=memory", *SMALL])
    assert pretrain(mem_cfg, pool, mem).history[-1]["step"] == steps


def test_resumed_inside_an_epoch_the_run_continues_it_with_the_same_batches(ray_session, uneven_pool,
                                                                             tmp_path: Path, capfd) -> None:
    """A checkpoint taken inside epoch 2 (train.checkpoint_every_steps) is resumed in a fresh run directory:
    it skips the batches already trained and trains exactly the rest, the batches the uninterrupted run
    trained after that point, and ends with the same model."""
    from pipelines.pretrain import pretrain

    pool = ShardPool.count(uneven_pool)
    overrides = ["train.num_workers=0", "train.epochs=2", "data.cache=stream", "train.record_seen_keys=true",
                 "train.checkpoint_every_steps=4", "data.shuffle_window_batches=2", *SMALL]
    full = tmp_path / "full"
    reference = pretrain(load_config(None, [f"run_dir={full}", *overrides]), pool, full).history
    ckpts = full / "pretrain" / "local_checkpoints"
    mid = ckpts / "epoch_000001_step_000000008"  # 6 steps per epoch: step 8 is batch 2 of epoch 2
    assert mid.is_dir(), sorted(p.name for p in ckpts.iterdir())

    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "pretrain" / "local_checkpoints").mkdir(parents=True)
    shutil.copytree(mid, resumed_dir / "pretrain" / "local_checkpoints" / mid.name)
    capfd.readouterr()
    resumed = pretrain(load_config(None, [f"run_dir={resumed_dir}", *overrides]), pool, resumed_dir).history
    assert "continuing epoch 2 at its batch 3" in capfd.readouterr().out

    assert [h["step"] for h in resumed] == [6, 12]
    assert resumed[-1]["resumes"] == 1 and resumed[-1]["samples_seen"] == 4 * 64  # only the 4 untrained batches
    # exactly the uninterrupted run's last 4 batches of epoch 2, in the same order
    assert seen(resumed_dir, 2) == seen(full, 2)[2 * 64:]
    a = torch.load(full / "checkpoint.pt", weights_only=True)["method"]
    b = torch.load(resumed_dir / "checkpoint.pt", weights_only=True)["method"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert reference[-1]["step"] == resumed[-1]["step"]


def test_a_shard_gone_or_cut_short_after_curation_is_skipped_counted_and_the_steps_kept(
        ray_session, mnist_digits, tmp_path: Path) -> None:
    from pipelines.pretrain import pretrain

    images, labels = mnist_digits
    paths = digit_shards(tmp_path / "pool", images, labels, [100, 100, 100, 100])
    pool = ShardPool.count(paths)
    Path(paths[1]).unlink()  # gone between curation and training
    data = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(data[: len(data) // 2])  # cut short: about half its samples remain
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "train.num_workers=0", "train.epochs=1",
                             "data.cache=stream", *SMALL])
    history = pretrain(cfg, pool, tmp_path / "run").history
    h = history[-1]
    assert len(history) == 1 and h["step"] == 400 // 64  # the epoch took its planned steps, never fewer
    assert h["skipped_shards"] == 2
    assert h["padded_samples"] > 100  # the missing samples were made up by repeats, and counted
    assert h["samples_seen"] + h["padded_samples"] == 6 * 64


def test_a_pool_smaller_than_one_global_batch_is_refused_before_training(ray_session, mnist_digits,
                                                                          tmp_path: Path) -> None:
    from curation.errors import InputError
    from pipelines.config import ConfigError
    from pipelines.pretrain import pretrain

    images, labels = mnist_digits
    pool = ShardPool.count(digit_shards(tmp_path / "pool", images, labels, [50]))
    cfg = load_config(None, [f"run_dir={tmp_path}", "train.num_workers=0", "train.epochs=1", *SMALL])
    with pytest.raises(InputError, match=r"holds 50 samples, fewer than one global batch \(train.batch_size=64"):
        pretrain(cfg, pool, tmp_path)
    with pytest.raises(ConfigError, match="data.limit"):
        load_config(None, ["data.limit=100", "train.batch_size=256"])


# --------------------------------------------------------------------------- crops at real resolution


def _discs(width: int, height: int, radius: int, spacing: int) -> np.ndarray:
    """White discs on black along the middle of a wide image: round things that a squash would flatten."""
    yy, xx = np.mgrid[:height, :width]
    img = np.zeros((height, width), np.uint8)
    for cx in range(spacing // 2, width, spacing):
        img[(xx - cx) ** 2 + (yy - height / 2) ** 2 <= radius ** 2] = 255
    return img


def _blob_aspects(view: np.ndarray) -> list[float]:
    """Width / height of every bright blob that does not touch the border of a crop."""
    from scipy import ndimage

    mask = view > 127
    lab, n = ndimage.label(mask)
    out = []
    for sl in ndimage.find_objects(lab):
        ys, xs = sl
        if ys.start == 0 or xs.start == 0 or ys.stop == mask.shape[0] or xs.stop == mask.shape[1]:
            continue
        out.append((xs.stop - xs.start) / (ys.stop - ys.start))
    return out


@pytest.mark.parametrize("fmt,scale", [("png", 1), ("jpg", 4)])
def test_crops_of_a_wide_image_keep_its_geometry(tmp_path: Path, fmt: str, scale: int) -> None:
    """A 400x100 image (and a 1600x400 JPEG, decoded reduced) of round discs: every disc in every crop is
    still round. The squashing decode (a 32 px square of the whole image) made them 4x taller than wide."""
    from PIL import Image

    from pipelines.feed import crop_segments
    from ssl_models.augment import ViewRecipe

    img = _discs(400 * scale, 100 * scale, 12 * scale, 35 * scale)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    path = tmp_path / "wide.tar"
    write_shard([Sample(f"img{i:03d}", buf.getvalue(), fmt, -1) for i in range(64)], path)
    recipe = ViewRecipe(size=32, crop_scale=(0.15, 0.25), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5)
    batch = {"uri": np.array([str(path)]), "shard": np.array([0]), "start": np.array([0]), "stop": np.array([64]),
             "first_id": np.array([0])}
    blocks = list(crop_segments(batch, recipe, num_views=2, channels=1, seed=0, epoch=0, max_pixels=10**8))
    views = np.concatenate([b["views"] for b in blocks])
    assert views.shape == (64, 2, 32, 32, 1) and not any(e for b in blocks for e in b["error"])
    aspects = [a for v in views.reshape(-1, 32, 32) for a in _blob_aspects(v)]
    assert len(aspects) > 50
    # a crop of ratio r shows a disc stretched by at most r (3/4..4/3); a squash would give 1/4
    assert 0.6 < np.median(aspects) < 1.6 and min(aspects) > 0.45, sorted(aspects)[:5]


def test_stream_crop_boxes_follow_torchvisions_scale_and_ratio_on_a_wide_image() -> None:
    """The Ray Data stage draws each sample's box against its own width/height (here 400x100): areas and
    pixel ratios match torchvision's RandomResizedCrop.get_params (KS tests), fallback crops included."""
    from scipy import stats
    from torchvision import transforms as T

    from pipelines.feed import chunk_crop_params
    from ssl_models.augment import ViewRecipe, crop_box_pixels

    width, height, n = 400, 100, 4096
    recipe = ViewRecipe(crop_scale=(0.08, 1.0))
    params = [p for chunk in range(n // 256)
              for p in chunk_crop_params(recipe, 1, torch.full((256,), width / height), 7, 0, 3, chunk)]
    boxes = np.array([crop_box_pixels(p, i, width, height) for p in params for i in range(len(p))])
    w, h = np.round(boxes[:, 2] - boxes[:, 0]), np.round(boxes[:, 3] - boxes[:, 1])
    torch.manual_seed(0)
    ref = np.array([T.RandomResizedCrop.get_params(torch.zeros(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
                    for _ in range(n)], dtype=float)
    rh, rw = ref[:, 2], ref[:, 3]
    for name, ours, theirs in (("area", w * h / (width * height), rw * rh / (width * height)),
                               ("log_ratio", np.log(w / h), np.log(rw / rh))):
        result = stats.ks_2samp(ours, theirs)
        assert result.pvalue > 1e-3, f"{name}: KS {result.statistic:.3f} p={result.pvalue:.2g}"
    assert (boxes[:, 0] >= -1e-6).all() and (boxes[:, 2] <= width + 1e-6).all()  # boxes stay inside the image


def test_the_evaluation_view_crops_the_centre_instead_of_squashing() -> None:
    from PIL import Image

    from curation.decode import decode_to_array

    img = _discs(400, 100, 30, 400)  # one disc, at the centre
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    view = decode_to_array(buf.getvalue(), 32, 1)[:, :, 0]
    assert view.shape == (32, 32)
    aspects = _blob_aspects(view)
    assert aspects and all(0.8 < a < 1.25 for a in aspects), aspects
    square = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)  # CIFAR-sized: the identity
    buf = io.BytesIO()
    Image.fromarray(square).save(buf, format="PNG")
    assert np.array_equal(decode_to_array(buf.getvalue(), 32, 1)[:, :, 0], square)


# --------------------------------------------------------------------------- pruning on the stream


def test_a_stream_pruning_round_keeps_the_exact_fraction_and_the_next_epoch_reads_exactly_its_keep_list(
        ray_session, mnist_digits, tmp_path: Path) -> None:
    from pipelines.pretrain import pretrain

    images, labels = mnist_digits
    paths = digit_shards(tmp_path / "pool", images, labels, [128, 128, 128, 128])
    pool = ShardPool.count(paths)
    run = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", "train.num_workers=0", "train.epochs=2", "data.cache=stream",
                             "train.record_seen_keys=true", "dynamic.policy=cluster_balance",
                             "dynamic.warmup_epochs=1", "dynamic.every_epochs=1", "dynamic.keep_fraction=0.5",
                             "dynamic.subset_for_clustering=300", "dynamic.levels=[16,4]", *SMALL,
                             "train.knn_monitor_every=1"])
    def digits(lo: int, hi: int):
        return ray_session.data.from_items([{"key": f"m{i:05d}", "image": images[i][:, :, None],
                                             "label": int(labels[i])} for i in range(lo, hi)])

    # the online monitor's sets are datasets of their own (pipelines/monitor.py), never the streamed pool
    monitor = MonitorSets(bank=digits(4200, 4700), queries=digits(4000, 4200), pool=digits(0, 200))
    history = pretrain(cfg, pool, run, monitor).history
    assert all(0.3 < h["knn_top1"] <= 1.0 for h in history)
    assert all(h["rankme"] > 1 and h["feature_std"] > 0 for h in history)  # the label-free metrics too
    assert history[-1]["step"] == 2 * 512 // 64  # the unpruned step budget: 1 full epoch + 2 half epochs
    assert [h["active_samples"] for h in history] == [512, 256, 256]
    rounds = [h for h in history if "prune_round_seconds" in h]
    assert [h["epoch"] for h in rounds] == [2, 3] and all(h["prune_kept"] == 256 for h in rounds)
    assert all(0 < h["prune_cluster_entropy_after"] <= 1 for h in rounds)
    for epoch in (2, 3):
        keep = pq.read_table(run / "keep_lists" / f"epoch_{epoch:06d}.parquet").column("key").to_pylist()
        assert len(keep) == len(set(keep)) == 256  # exactly keep_fraction x 512
        read = seen(run, epoch)
        assert sorted(read) == sorted(keep)  # the epoch read the keep-list, each sample once, nothing else


def test_a_random_stream_round_draws_the_exact_fraction_afresh_each_round_without_embedding(
        ray_session, mnist_digits, tmp_path: Path) -> None:
    """``dynamic.policy=random`` (the control for the selection rules): exactly keep_fraction of distinct
    pool keys, a different draw each round, and no time spent embedding."""
    from pipelines.dynamic import stream_round
    from pipelines.models import build_method_from_config

    images, labels = mnist_digits
    paths = digit_shards(tmp_path / "pool", images, labels, [100, 100, 100])
    pool = ShardPool.count(paths)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "data.cache=stream", "dynamic.policy=random",
                             "dynamic.keep_fraction=0.4", *SMALL])
    backbone = build_method_from_config(cfg).backbone
    first = stream_round(cfg, backbone, pool, epoch=2, run_dir=None)
    second = stream_round(cfg, backbone, pool, epoch=3, run_dir=None)
    for r in (first, second):
        keys = [k for ks in r.keep.values() for k in ks]
        assert len(keys) == len(set(keys)) == 120 and r.info["kept"] == 120 and r.info["pool"] == 300
        assert r.info["embed_seconds"] == 0.0
    assert first.keep != second.keep


def test_each_ranks_own_count_is_summed_not_rank_zeros_times_the_world(tmp_path: Path) -> None:
    """``active_samples`` and the other whole-run counts add every rank's own number (two gloo ranks with
    3 and 5 samples give 8; rank 0's figure times the world size would give 6)."""
    import torch.multiprocessing as mp

    mp.spawn(_sum_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert [float((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [8.0, 8.0]


def _sum_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from pipelines.pretrain import _sum_over_ranks

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        total = _sum_over_ranks([3.0 if rank == 0 else 5.0], torch.device("cpu"))[0]
        Path(out, f"rank{rank}").write_text(str(total))
    finally:
        dist.destroy_process_group()


def test_the_shipped_224px_config_trains_on_a_folder_of_photos_kept_at_their_own_size(
        ray_session, cifar10_root: Path, tmp_path: Path) -> None:
    """configs/imagenet_style.yaml (ResNet-50, 224 px) on a folder of odd-sized photos (CIFAR-10 JPEGs
    upscaled to 160..500 px each side): `sslpipe shard` keeps every image at its own size, and the stream
    feed trains on them (two steps on the CPU here)."""
    from PIL import Image

    from pipelines.pretrain import pretrain
    from pipelines.sources import shard_source

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos" / "any"
    folder.mkdir(parents=True)
    sizes = {}
    for i, f in enumerate(sorted((cifar10_root / "train").glob("*/*.jpg"))[:16]):
        w, h = (int(v) for v in rng.integers(160, 501, 2))
        Image.open(f).convert("RGB").resize((w, h)).save(folder / f"p{i:02d}.jpg", quality=90)
        sizes[f"any/p{i:02d}"] = (w, h)  # a folder sample's key: its path under the root, no extension
    report = shard_source(str(tmp_path / "photos"), str(tmp_path / "shards"), 8)
    from curation.ingest import iter_samples

    stored = {r["key"]: Image.open(io.BytesIO(r["image"])).size for p in report.paths for r in iter_samples(p)}
    assert stored == sizes  # not resized on the way into shards

    cfg = load_config(REPO / "configs" / "imagenet_style.yaml", [
        f"run_dir={tmp_path / 'run'}", "train.use_gpu=false", "train.num_workers=0", "train.precision=fp32",
        "train.compile=false", "train.batch_size=8", "train.max_steps=2", "train.knn_monitor_every=0",
        "data.cache_budget_gb=0.001"])
    assert (cfg.backbone.name, cfg.data.image_size) == ("resnet50", 224)
    history = pretrain(cfg, ShardPool.count(report.paths), tmp_path / "run").history
    assert history[-1]["step"] == 2 and np.isfinite(history[-1]["loss"])


REPO = Path(__file__).resolve().parent.parent
