"""Curation on a real Ray: every input key once in the manifest, planted junk found with its reason."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.planting import plant_pool
from curation.shards import iter_tar_samples, write_shards
from pipelines.config import CurateConfig
from pipelines.curate import curate


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, mnist_digits) -> tuple[list[str], list]:
    images, labels = mnist_digits
    samples = plant_pool(images[:400], labels[:400], exact_duplicates=40, near_duplicates=20, blank=6, noise=6,
                         corrupt=8, seed=1)
    shards = write_shards(samples, tmp_path_factory.mktemp("pool"), shard_size=100)
    return [str(p) for p in shards], samples


@pytest.fixture(scope="module")
def curated(ray_session, planted, tmp_path_factory: pytest.TempPathFactory):
    shards, _ = planted
    out = tmp_path_factory.mktemp("curated")
    return curate(shards, out, CurateConfig(near_dedup_max_hamming=1)), out


def test_conservation_every_key_exactly_once(planted, curated) -> None:
    _, samples = planted
    result, _ = curated
    manifest = pq.read_table(result.manifest_path)
    keys = manifest.column("key").to_pylist()
    assert sorted(keys) == sorted(s.key for s in samples)
    kept = sum(manifest.column("kept").to_pylist())
    assert result.summary["kept"] == kept
    assert result.summary["kept"] + result.summary["removed"] == len(samples)


def test_curated_shards_hold_exactly_the_kept_samples(curated) -> None:
    result, _ = curated
    manifest = pq.read_table(result.manifest_path)
    kept = {k for k, flag in zip(manifest.column("key").to_pylist(), manifest.column("kept").to_pylist()) if flag}
    written = [row["key"] for p in result.shard_paths for row in iter_tar_samples(open(p, "rb"), p)]
    assert len(written) == len(set(written))
    assert set(written) == kept


def test_planted_junk_is_removed_with_its_reason(planted, curated) -> None:
    _, samples = planted
    result, _ = curated
    rows = {r["key"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    by_kind: dict[str, Counter] = {}
    for s in samples:
        by_kind.setdefault(s.meta["planted"], Counter())[rows[s.key]["reason"]] += 1
    assert by_kind["blank"] == Counter({"low_variance": 6})
    assert set(by_kind["corrupt"]) <= {"decode_error", "missing_image"} and sum(by_kind["corrupt"].values()) == 8
    # exact duplicates: every planted copy group keeps exactly one member
    groups: dict[str, list[str]] = {}
    for s in samples:
        if s.meta["planted"] in ("original", "exact_dup"):
            groups.setdefault(s.meta["of"], []).append(s.key)
    for members in groups.values():
        kept = [k for k in members if rows[k]["kept"] or rows[k]["reason"] == "near_dup"]
        assert len(kept) == 1, [rows[k]["reason"] for k in members]
        for k in members:
            if rows[k]["reason"] == "exact_dup":
                assert rows[k]["duplicate_of"] in members  # points at its own group


def test_duplicate_keys_across_shards_are_recorded_not_lost(ray_session, tmp_path: Path, mnist_digits) -> None:
    from curation.planting import encode_png
    from curation.shards import Sample, write_shard

    images, _ = mnist_digits
    write_shard([Sample("a", encode_png(images[0])), Sample("b", encode_png(images[1]))], tmp_path / "s1.tar")
    write_shard([Sample("a", encode_png(images[2]))], tmp_path / "s2.tar")
    result = curate([str(tmp_path / "s1.tar"), str(tmp_path / "s2.tar")], tmp_path / "out", CurateConfig())
    manifest = pq.read_table(result.manifest_path).to_pylist()
    assert len(manifest) == 3
    assert len({r["key"] for r in manifest}) == 3
    assert Counter(r["reason"] for r in manifest)["duplicate_key"] == 1


def test_truncated_shard_is_recorded(ray_session, tmp_path: Path, mnist_digits) -> None:
    from curation.planting import encode_png
    from curation.shards import Sample, write_shard

    images, _ = mnist_digits
    path = tmp_path / "s.tar"
    write_shard([Sample(f"k{i}", encode_png(images[i])) for i in range(20)], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    result = curate([str(path)], tmp_path / "out", CurateConfig())
    reasons = Counter(r["reason"] for r in pq.read_table(result.manifest_path).to_pylist())
    assert reasons["truncated_shard"] == 1
    assert reasons["ok"] >= 5
    assert json.loads(result.summary_path.read_text())["reasons"]["truncated_shard"] == 1


def test_parquet_input_is_curated_into_tar_shards_with_every_kept_sample(ray_session, planted, curated,
                                                                         tmp_path: Path) -> None:
    """Parquet shards in, the same decisions as for tars, and the kept samples really written (as tars)."""
    from pipelines.sources import shard_source

    shards, samples = planted
    shard_source("{" + ",".join(shards) + "}", str(tmp_path / "pq"), 150, fmt="parquet")
    pq_shards = sorted(str(p) for p in (tmp_path / "pq").glob("shard-*.parquet"))
    assert pq_shards
    result = curate(pq_shards, tmp_path / "out", CurateConfig(near_dedup_max_hamming=1))
    manifest = pq.read_table(result.manifest_path)
    kept = {k for k, flag in zip(manifest.column("key").to_pylist(), manifest.column("kept").to_pylist()) if flag}
    assert all(p.endswith(".tar") for p in result.shard_paths)
    written = [row["key"] for p in result.shard_paths for row in iter_tar_samples(open(p, "rb"), p)]
    assert sorted(written) == sorted(kept) and len(kept) == result.summary["kept"] > 0
    tar_result, _ = curated  # the tar run of the same pool kept the same keys
    tar_manifest = pq.read_table(tar_result.manifest_path)
    assert kept == {k for k, f in zip(tar_manifest.column("key").to_pylist(), tar_manifest.column("kept").to_pylist()) if f}
