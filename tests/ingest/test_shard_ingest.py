"""`sslpipe shard` and the shard readers on real files: index, formats, bad input, pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.errors import InputError
from curation.ingest import expand_uris, iter_samples
from pipelines.readers import read_decoded, read_parquet_images, read_shards
from curation.shards import expand_braces, iter_tar_samples, list_shards
from pipelines.cli import main as cli_main
from pipelines.sources import shard_source
from tests.ingest.helpers import tar_bytes, write_digit_folder


@pytest.fixture()
def digit_folder(tmp_path: Path, mnist_digits) -> tuple[Path, dict[str, bytes]]:
    images, labels = mnist_digits
    root = tmp_path / "digits"
    return root, write_digit_folder(root, images, labels, 60)


def test_folder_to_tar_shards_with_an_index_that_points_at_the_bytes(tmp_path: Path, digit_folder) -> None:
    root, files = digit_folder
    report = shard_source(str(root), str(tmp_path / "out"), shard_size=25)
    assert [Path(p).name for p in report.paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    index = pq.read_table(report.index_path).to_pylist()
    assert [r["key"] for r in index] == sorted(files)
    for row in index:  # offset/size address the image bytes inside the tar: a range read gives the file back
        with open(tmp_path / "out" / row["shard"], "rb") as f:
            f.seek(row["offset"])
            assert f.read(row["size"]) == files[row["key"]]
        assert row["label"] == int(row["key"][1])  # d<digit>/NNNNN: class folders sorted = digit order
    keys_in_order = [r["key"] for p in report.paths for r in iter_tar_samples(open(p, "rb"), p)]
    assert keys_in_order == sorted(files)  # sorted inside and across shards
    assert report.rejected == {}


def test_parquet_output_reads_back_through_ray_with_the_same_rows(tmp_path: Path, digit_folder, ray_session) -> None:
    root, files = digit_folder
    report = shard_source(str(root), str(tmp_path / "pq"), shard_size=40, fmt="parquet")
    assert all(p.endswith(".parquet") for p in report.paths)
    index = pq.read_table(report.index_path)
    assert index.column("offset").to_pylist()[:3] == [0, 1, 2]  # parquet: offset is the row number
    rows = read_parquet_images(str(tmp_path / "pq")).take_all()
    assert {r["key"]: r["image"] for r in rows} == files
    assert all(r["read_error"] == "" and r["ext"] == "png" for r in rows)
    both = read_shards([str(tmp_path / "pq" / "*.parquet")]).count()
    assert both == len(files)
    decoded = read_decoded(str(tmp_path / "pq"), 28, 1).take_all()
    assert len(decoded) == len(files) and decoded[0]["image"].shape == (28, 28, 1)


def test_read_decoded_is_one_task_and_one_small_block_per_shard(tmp_path: Path, digit_folder, ray_session) -> None:
    # issue #3: read + decode as two fused map_batches gave one task 256 shard paths, so a run of
    # <= 256 shards was decoded by one task into 128 MiB blocks and memory grew with N
    root, files = digit_folder
    report = shard_source(str(root), str(tmp_path / "out"), shard_size=25)
    ds = read_decoded(report.paths, 28, 1).materialize()
    assert ds.num_blocks() == len(report.paths) == 3
    assert ds.count() == len(files) and sorted(r["key"] for r in ds.take_all()) == sorted(files)


def test_bad_folder_inputs_are_counted_with_reasons_and_never_fatal(tmp_path: Path, digit_folder) -> None:
    root, files = digit_folder
    (root / "d0" / "empty.png").write_bytes(b"")
    (root / "d0" / "notes.jpg").write_bytes(b"<html>403 Forbidden</html>")
    first = sorted(files)[0]  # the same key again as a .jpg beside its .png: a duplicate key
    cls, stem = first.split("/")
    (root / cls / f"{stem}.jpg").write_bytes(files[first])
    os.symlink("/proc/self/mem", root / "d1" / "unreadable.png")  # a regular file whose read fails, even for root
    report = shard_source(str(root), str(tmp_path / "out"), shard_size=16)
    rejects = pq.read_table(report.rejects_path).to_pylist()
    reasons = {r["key"]: r["reason"] for r in rejects}
    assert reasons["d0/empty"] == "empty_file"
    assert reasons["d0/notes"] == "not_an_image"
    assert reasons["d1/unreadable"] == "unreadable"
    assert reasons[first] == "duplicate_key"
    assert report.samples == len(files)  # every good image made it, once
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected"] == {"duplicate_key": 1, "empty_file": 1, "not_an_image": 1, "unreadable": 1}
    assert all(r["shard"] for r in rejects if r["reason"] != "duplicate_key")  # recorded per output shard


def _image(files: dict[str, bytes], i: int) -> bytes:
    return list(files.values())[i]


def test_bad_tar_inputs_are_recorded_per_source_shard(tmp_path: Path, digit_folder) -> None:
    _, files = digit_folder
    src = tmp_path / "src"
    src.mkdir()
    good = tar_bytes([("a1.png", _image(files, 0)), ("a1.cls", b"3"), ("a2.png", _image(files, 1)), ("a2.cls", b"4"),
                      ("a3.cls", b"5")])  # a3: no image member
    (src / "s-000.tar").write_bytes(good)
    full = tar_bytes([("b1.png", _image(files, 2)), ("b2.png", _image(files, 3)), ("b3.png", _image(files, 4))])
    (src / "s-001.tar").write_bytes(full[: 512 * 5])  # cut inside b3's data (b1: hdr+1 block... b2 ok, b3 cut)
    (src / "s-002.tar").write_bytes(tar_bytes([("a1.png", _image(files, 5)), ("c1.png", _image(files, 6))]))  # a1 again
    (src / "s-003.tar").write_bytes(b"")  # zero-byte shard
    report = shard_source(str(src / "s-{000..003}.tar"), str(tmp_path / "out"), shard_size=10)
    rejects = pq.read_table(report.rejects_path).to_pylist()
    by_source: dict[str, set[str]] = {}
    for r in rejects:
        by_source.setdefault(Path(r["source"]).name, set()).add(r["reason"])
    assert "no_image_member" in by_source["s-000.tar"]
    assert "truncated_shard" in by_source["s-001.tar"]
    assert by_source["s-002.tar"] == {"duplicate_key"}
    assert "truncated_shard" in by_source["s-003.tar"]
    index = pq.read_table(report.index_path).to_pylist()
    keys = [r["key"] for r in index]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert {"a1", "a2", "c1", "b1"} <= set(keys) and "a3" not in keys
    first_a1 = next(r for r in index if r["key"] == "a1")
    assert first_a1["label"] == 3 and first_a1["source"].endswith("s-000.tar")  # the first copy wins
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rejected_by_source"][str(src / "s-002.tar")] == {"duplicate_key": 1}


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: proof of execution is a new file on disk."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path: Path, digit_folder, ray_session) -> None:
    _, files = digit_folder
    control = tmp_path / "control-created"
    pickle.loads(pickle.dumps(_CreatesFile(str(control))))  # the payload is live: unpickling creates a file
    assert control.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(marker)))
    shard = tmp_path / "evil" / "e-000.tar"
    shard.parent.mkdir()
    shard.write_bytes(tar_bytes([("k1.pyd", payload), ("k1.png", _image(files, 0)), ("k2.pickle", payload),
                                 ("k2.png", _image(files, 1)), ("k3.pyd", payload)]))
    rows = list(iter_samples(str(shard)))
    ray_rows = read_shards([str(shard)]).take_all()
    report = shard_source(str(shard), str(tmp_path / "out"), shard_size=10)
    assert not marker.exists()
    assert [r["key"] for r in rows] == ["k1", "k2", "k3"] and rows[2]["read_error"] == "no_image_member"
    assert len(ray_rows) == 3 and all(r["image"] is None or r["image"][:4] == b"\x89PNG" for r in ray_rows)
    assert report.samples == 2
    out_members = [r["key"] for r in iter_tar_samples(open(report.paths[0], "rb"), report.paths[0])]
    assert out_members == ["k1", "k2"]  # pickles are not copied into our shards either


def test_brace_lists_and_globs_expand_in_order(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"s-{i:03d}.tar").write_bytes(tar_bytes([(f"k{i}.png", b"\x89PNG\r\n\x1a\n")]))
    (tmp_path / "t.parquet").write_bytes(b"")
    assert expand_braces("x-{08..10}-{a,b}") == ["x-08-a", "x-08-b", "x-09-a", "x-09-b", "x-10-a", "x-10-b"]
    names = [Path(p).name for p in expand_uris(str(tmp_path / "s-{001..002}.tar"))]
    assert names == ["s-001.tar", "s-002.tar"]
    assert [Path(p).name for p in expand_uris(f"file://{tmp_path}/s-00[13].tar")] == ["s-001.tar", "s-003.tar"]
    assert expand_uris(f"file://{tmp_path}/s-000.tar")[0].startswith("file://")
    assert [Path(p).name for p in expand_uris(str(tmp_path))] == [f"s-{i:03d}.tar" for i in range(4)] + ["t.parquet"]
    assert [Path(p).name for p in list_shards(str(tmp_path / "s-{000,003}.tar"))] == ["s-000.tar", "s-003.tar"]
    with pytest.raises(InputError, match="no shard matches"):
        expand_uris(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(InputError, match="does not exist"):
        expand_uris(str(tmp_path / "s-{004..005}.tar"))


def test_cli_shard_format_flag_and_user_errors(tmp_path: Path, digit_folder, capsys, ray_session) -> None:
    root, files = digit_folder
    assert cli_main(["shard", str(root), str(tmp_path / "o"), "--shard-size", "50", "--format", "parquet"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("shard-*")) == ["shard-000000.parquet", "shard-000001.parquet"]
    assert cli_main(["shard", str(root), str(tmp_path / "o"), "--shard-size", "20"]) == 2  # different plan: refused
    assert "different input" in capsys.readouterr().err
    assert cli_main(["shard", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2


def test_tar_writer_writes_the_bytes_tarfile_writes(tmp_path: Path, digit_folder) -> None:
    """The shard writer builds ustar headers itself (tarfile spends most of a shard write on them): the archive
    must stay byte for byte what tarfile writes, long and non-ASCII names (pax headers) included."""
    import io
    import tarfile

    from curation.shards import Sample, write_tar_stream

    _, files = digit_folder
    images = list(files.values())
    samples = [Sample(f"2023/01/{i:03d}", images[i], "png", i % 3, {"file": f"{i}.png"} if i % 2 else {})
               for i in range(12)]
    samples += [Sample("d/" + "x" * 120, images[12], "png", 1), Sample("été/ü", images[13], "jpg", -1),
                Sample("nothing", None, "png", 2)]
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for s in sorted(samples, key=lambda s: s.key):
            members = ([(f"{s.key}.{s.ext}", s.image)] if s.image is not None else []) + [
                (f"{s.key}.cls", str(s.label).encode())] + (
                [(f"{s.key}.json", json.dumps(s.meta, sort_keys=True).encode())] if s.meta else [])
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
    written = io.BytesIO()
    located = write_tar_stream(samples, written)
    assert written.getvalue() == expected.getvalue()
    for key, offset, size in located:  # and the offsets still point at each image
        image = next(s.image for s in samples if s.key == key)
        assert (written.getvalue()[offset: offset + size] == image) if image is not None else offset == -1
