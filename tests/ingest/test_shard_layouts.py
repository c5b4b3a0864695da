"""`sslpipe shard` on the layouts users bring: nested folders, labels or none, img2dataset / NeMo Curator output,
compressed tars, oversized images; and the bad inputs that must stop it before any shard is written."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.ingest import expand_uris
from pipelines.readers import read_shards
from curation.planting import encode_png
from curation.shards import iter_tar_samples, list_shards
from pipelines.cli import main as cli_main
from pipelines.config import CurateConfig
from pipelines.sources import shard_source
from tests.ingest.helpers import tar_bytes

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _read_back(paths: list[str]) -> dict[str, dict]:
    return {r["key"]: r for p in paths for r in iter_tar_samples(open(p, "rb"), p)}


def _summary(dest: Path) -> dict:
    return json.loads((dest / "summary.json").read_text())


def sslpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd)})


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def digits(mnist_digits) -> list[bytes]:
    images, _ = mnist_digits
    return [encode_png(images[i]) for i in range(40)]


def test_nested_tree_is_walked_keyed_by_relative_path_and_every_skipped_file_listed(tmp_path: Path, digits) -> None:
    root = tmp_path / "photos"
    files = {
        "2023/01/a": _write(root / "2023/01/a.png", digits[0]),
        "2023/02/a": _write(root / "2023/02/a.png", digits[1]),  # same name, other partition: another sample
        "2024/12/31/b": _write(root / "2024/12/31/b.png", digits[2]),
        "top": _write(root / "top.png", digits[3]),
        "2023/01/IMG_2020_final": _write(root / "2023/01/IMG.2020.final.png", digits[4]),
    }
    _write(root / "2023/01/a.txt", b"a caption")
    _write(root / ".DS_Store", b"\0")
    _write(root / "2023/.thumbs/x.png", digits[5])
    _write(root / "2023/old.tar", tar_bytes([("z.png", digits[6])]))
    os.symlink(root, root / "2023" / "loop")  # a link back to the root: followed, the walk would never end
    os.symlink(root / "missing.png", root / "2023" / "gone.png")
    with open(os.fsencode(root / "2024") + b"/bad\xff.png", "wb") as f:  # a name no key or table can hold
        f.write(digits[7])
    report = shard_source(str(root), str(tmp_path / "out"), shard_size=3, labels="none")

    index = pq.read_table(report.index_path).to_pylist()
    assert sorted(r["key"] for r in index) == sorted(files) and all(r["label"] == -1 for r in index)
    back = _read_back(report.paths)  # nested keys survive writing and reading the tar
    assert {k: r["image"] for k, r in back.items()} == files
    assert json.loads(back["2023/01/IMG_2020_final"]["meta"]) == {"file": "2023/01/IMG.2020.final.png",
                                                                   "source_key": "2023/01/IMG.2020.final"}
    ignored = {Path(r["path"]).relative_to(root).as_posix(): r["reason"]
               for r in pq.read_table(tmp_path / "out" / "ignored.parquet").to_pylist()}
    assert ignored == {"2023/01/a.txt": "not_an_image_file", ".DS_Store": "hidden", "2023/.thumbs": "hidden",
                       "2023/old.tar": "shard_in_image_folder", "2023/loop": "linked_folder",
                       "2023/gone.png": "broken_link", "2024/bad\\xff.png": "name_not_utf8"}
    summary = _summary(tmp_path / "out")
    assert summary["ignored"]["count"] == 7 and len(summary["ignored"]["files"]) == 7
    assert set(summary["ignored"]["reasons"]) == set(ignored.values())  # each reason explained
    assert summary["rejected"] == {} and summary["samples"] == 5
    assert report.ignored == dict(Counter(ignored.values()))


def test_labels_come_from_folders_only_when_asked(tmp_path: Path, digits, ray_session, capsys) -> None:
    root = tmp_path / "pets"
    _write(root / "cat/x.png", digits[0])
    _write(root / "cat/2023/y.png", digits[1])  # any depth under the class folder
    _write(root / "dog/z.png", digits[2])
    _write(root / "loose.png", digits[3])  # at the top: no class
    assert cli_main(["shard", str(root), str(tmp_path / "default")]) == 0
    default = _summary(tmp_path / "default")["labels"]
    assert default["source"] == "none" and default["labelled"] == 0 and default["unlabelled"] == 4
    assert cli_main(["shard", str(root), str(tmp_path / "folder"), "--labels", "folder"]) == 0
    labels = {r["key"]: r["label"] for r in pq.read_table(tmp_path / "folder" / "index.parquet").to_pylist()}
    assert labels == {"cat/x": 0, "cat/2023/y": 0, "dog/z": 1, "loose": -1}
    summary = _summary(tmp_path / "folder")["labels"]
    assert summary["classes"] == ["cat", "dog"] and summary["labelled"] == 3 and summary["unlabelled"] == 1
    assert "(3 labelled)" in capsys.readouterr().out


def test_labels_from_a_csv_or_parquet_file(tmp_path: Path, digits) -> None:
    root = tmp_path / "scans"
    for i, rel in enumerate(["2023/01/a.png", "2023/01/b.png", "2023/02/c.png", "d.png"]):
        _write(root / rel, digits[i])
    csv = tmp_path / "labels.csv"  # relative paths with extension, class names, one key with no image
    csv.write_text("key,label\n2023/01/a.png,tumour\n2023/02/c.png,healthy\n./d.png,tumour\nnot/there.png,healthy\n")
    report = shard_source(str(root), str(tmp_path / "csv"), shard_size=10, labels=str(csv))
    labels = {r["key"]: r["label"] for r in pq.read_table(report.index_path).to_pylist()}
    assert labels == {"2023/01/a": 1, "2023/01/b": -1, "2023/02/c": 0, "d": 1}  # classes by sorted name
    summary = _summary(tmp_path / "csv")["labels"]
    assert summary["classes"] == ["healthy", "tumour"] and summary["source"] == f"file:{csv}"
    assert (summary["matched"], summary["label_keys_without_image"], summary["unlabelled"]) == (3, 1, 1)

    table = tmp_path / "labels.parquet"  # keys without extension, integer labels used as they are
    pq.write_table(pa.table({"key": ["2023/01/a", "2023/01/b"], "label": pa.array([7, 3], pa.int32())}), table)
    report = shard_source(str(root), str(tmp_path / "parquet"), shard_size=10, labels=str(table))
    labels = {r["key"]: r["label"] for r in pq.read_table(report.index_path).to_pylist()}
    assert labels == {"2023/01/a": 7, "2023/01/b": 3, "2023/02/c": -1, "d": -1}


def test_bad_input_is_one_line_and_exit_2_before_any_shard(tmp_path: Path, digits) -> None:
    empty = tmp_path / "empty_tree"
    _write(empty / "2023/01/notes.txt", b"no pictures here")
    (empty / "2024" / "02").mkdir(parents=True)
    proc = sslpipe("shard", str(empty), str(tmp_path / "out1"), cwd=tmp_path)
    _one_line_error(proc, "no images", "anywhere below", str(empty), "notes.txt")
    assert not (tmp_path / "out1").exists()

    root = tmp_path / "photos"
    _write(root / "2023/01/a.png", digits[0])
    _write(root / "2023/02/b.png", digits[1])
    wrong = tmp_path / "wrong.csv"  # absolute paths where relative ones are expected
    wrong.write_text(f"key,label\n{root}/2023/01/a.png,1\n{root}/2023/02/b.png,2\n")
    proc = sslpipe("shard", str(root), str(tmp_path / "out2"), "--labels", str(wrong), cwd=tmp_path)
    _one_line_error(proc, str(wrong), "matches", "2023/01/a.png")
    assert not (tmp_path / "out2").exists()

    no_column = tmp_path / "no_label.csv"
    no_column.write_text("key,class\n2023/01/a.png,1\n")
    proc = sslpipe("shard", str(root), str(tmp_path / "out3"), "--labels", str(no_column), cwd=tmp_path)
    _one_line_error(proc, str(no_column), "'label'", "key,label")
    assert not (tmp_path / "out3").exists()

    shard = tmp_path / "in.tar"
    shard.write_bytes(tar_bytes([("k.png", digits[0])]))
    proc = sslpipe("shard", str(shard), str(tmp_path / "out4"), "--labels", "folder", cwd=tmp_path)
    _one_line_error(proc, "--labels folder", str(shard))


def _img2dataset_shard(digits: list[bytes], shard: int, n: int) -> tuple[bytes, pa.Table, dict[str, bytes]]:
    """One shard as img2dataset writes it: KEY.jpg/.txt/.json in the tar, the same fields in a side parquet."""
    members, rows, images = [], [], {}
    for i in range(n):
        key = f"{shard:05d}{i:04d}"
        meta = {"key": key, "caption": f"photo {key}", "url": f"https://example.org/{key}.png", "status": "success"}
        members += [(f"{key}.jpg", digits[shard * n + i]), (f"{key}.txt", meta["caption"].encode()),
                    (f"{key}.json", json.dumps(meta).encode())]
        rows.append({**meta, "width": 28, "height": 28})
        images[key] = digits[shard * n + i]
    return tar_bytes(members), pa.Table.from_pylist(rows), images


def test_img2dataset_and_nemo_curator_output_is_read_as_it_is(tmp_path: Path, digits, ray_session) -> None:
    src = tmp_path / "laion_part"
    src.mkdir()
    tar0, side0, images = _img2dataset_shard(digits, 0, 6)
    tar1, side1, more = _img2dataset_shard(digits, 1, 6)
    images.update(more)
    (src / "00000.tar").write_bytes(tar0)
    pq.write_table(side0, src / "00000.parquet")
    (src / "00000_stats.json").write_text('{"successes": 6}')
    (src / "00001.tar.gz").write_bytes(gzip.compress(tar1, mtime=0))  # a compressed shard beside a plain one
    pq.write_table(side1, src / "00001.parquet")
    (src / "00001.idx").write_text("0 0\n")  # NeMo Curator's optional DALI index

    assert [Path(u).name for u in expand_uris(str(src))] == ["00000.tar", "00001.tar.gz"]  # the curation read path
    assert {r["key"]: r["image"] for r in read_shards(str(src)).take_all()} == images

    report = shard_source(str(src), str(tmp_path / "out"), shard_size=5)
    assert report.rejected == {}  # the side tables are not taken for shards without an image column
    back = _read_back(report.paths)
    assert {k: r["image"] for k, r in back.items()} == images  # keys preserved, every image
    assert all(json.loads(r["meta"])["caption"].startswith("photo") for r in back.values())  # metadata kept
    members = [n for p in report.paths for n in tarfile.open(p).getnames()]
    assert not [n for n in members if n.endswith(".txt")]  # captions are not copied
    ignored = {Path(r["path"]).name: r["reason"]
               for r in pq.read_table(tmp_path / "out" / "ignored.parquet").to_pylist()}
    assert ignored == {"00000.parquet": "side_table", "00001.parquet": "side_table",
                       "00000_stats.json": "not_a_shard", "00001.idx": "not_a_shard"}
    assert "img2dataset" in _summary(tmp_path / "out")["ignored"]["reasons"]["side_table"]


def test_compressed_tar_shards_in_a_directory_are_read_with_their_labels(tmp_path: Path, digits) -> None:
    src = tmp_path / "shards"
    src.mkdir()
    expected = {}
    for name, compress in (("a.tar", False), ("b.tar.gz", True), ("c.tgz", True)):
        members = []
        for i in range(4):
            key = f"{name[0]}{i}"
            members += [(f"{key}.png", digits[len(expected)]), (f"{key}.cls", str(len(expected) % 3).encode())]
            expected[key] = (digits[len(expected)], len(expected) % 3)
        data = tar_bytes(members)
        (src / name).write_bytes(gzip.compress(data, mtime=0) if compress else data)
    (src / "README.md").write_text("how these were made")
    assert [Path(p).name for p in list_shards(src)] == ["a.tar", "b.tar.gz", "c.tgz"]  # `sslpipe run` lists them too
    report = shard_source(str(src), str(tmp_path / "out"), shard_size=5, labels="none")  # shards keep their labels
    back = _read_back(report.paths)
    assert {k: (r["image"], r["label"]) for k, r in back.items()} == expected
    assert report.ignored == {"not_a_shard": 1} and report.rejected == {}


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_max_side_reencodes_only_the_images_over_it(tmp_path: Path, cifar10_root: Path) -> None:
    cifar = (cifar10_root / "train" / "cat" / "0000.jpg").read_bytes()
    upscaled = np.asarray(Image.open(io.BytesIO(cifar)).convert("RGB").resize((320, 240), Image.BICUBIC))
    gradient = np.tile(np.linspace(0, 4000, 400).astype(np.uint16), (100, 1))  # 12 bits in a 16-bit PNG
    deep = io.BytesIO()
    Image.fromarray(gradient).save(deep, "PNG")
    palette = io.BytesIO()
    Image.fromarray(upscaled).convert("P").save(palette, "GIF")
    root = tmp_path / "src"
    originals = {"big": _write(root / "big.jpg", _jpeg(upscaled)), "small": _write(root / "small.jpg", cifar),
                 "deep": _write(root / "deep.png", deep.getvalue()), "pal": _write(root / "pal.gif", palette.getvalue())}

    kept = shard_source(str(root), str(tmp_path / "as_is"), shard_size=10)
    assert {k: r["image"] for k, r in _read_back(kept.paths).items()} == originals  # default: bytes untouched

    report = shard_source(str(root), str(tmp_path / "capped"), shard_size=10, max_side=64)
    back = _read_back(report.paths)
    assert back["small"]["image"] == originals["small"]  # within the cap: not decoded, not re-encoded
    opened = {k: Image.open(io.BytesIO(back[k]["image"])) for k in ("big", "deep", "pal")}
    assert (opened["big"].format, opened["big"].size) == ("JPEG", (64, 48))
    assert (opened["deep"].format, opened["deep"].mode, opened["deep"].size) == ("PNG", "I;16", (64, 16))
    assert 3900 < np.asarray(opened["deep"]).max() <= 4000  # 16-bit values, not squeezed into 8 bits
    assert opened["pal"].format == "PNG" and opened["pal"].size == (64, 48)
    assert json.loads(back["big"]["meta"])["resized_from"] == [320, 240]
    assert back["pal"]["ext"] == "png" and report.resized == 3 == _summary(tmp_path / "capped")["resized"]
    resized_close = np.abs(np.asarray(opened["big"].convert("RGB"), np.int16)
                           - np.asarray(Image.fromarray(upscaled).resize((64, 48), Image.LANCZOS), np.int16))
    assert resized_close.mean() < 6  # the same picture, smaller


def test_nested_keys_survive_curation(tmp_path: Path, digits, ray_session) -> None:
    from pipelines.curate import curate

    root = tmp_path / "photos"
    for i in range(12):
        _write(root / f"{2023 + i % 2}/{1 + i % 3:02d}/img{i:03d}.png", digits[i])
    _write(root / "2024/05/copy.png", digits[0])  # the same bytes as 2023/01/img000.png
    report = shard_source(str(root), str(tmp_path / "shards"), shard_size=5)
    result = curate(report.paths, tmp_path / "curated", CurateConfig(near_dedup=False))
    manifest = {r["key"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert set(manifest) == {r["key"] for r in pq.read_table(report.index_path).to_pylist()}
    assert "2023/01/img000" in manifest and "2024/05/copy" in manifest
    assert [manifest[k]["kept"] for k in ("2023/01/img000", "2024/05/copy")] == [True, False]  # exact duplicate
    written = {r["key"] for p in result.shard_paths for r in iter_tar_samples(open(p, "rb"), p)}
    assert written == {k for k, r in manifest.items() if r["kept"]} and "2024/01/img003" in written


def test_run_keeps_class_folder_labels_for_an_image_folder_source(tmp_path: Path, digits) -> None:
    """`sslpipe run` shards an image-folder source with class labels (configs/cifar10.yaml evaluates with them),
    now including images below a class folder's sub-folders."""
    from pipelines.config import load_config
    from pipelines.sources import resolve_location

    root = tmp_path / "eval"
    _write(root / "cat/a.png", digits[0])
    _write(root / "cat/more/b.png", digits[1])
    _write(root / "dog/c.png", digits[2])
    paths = resolve_location(str(root), tmp_path / "pool", load_config(None))
    labels = {k: r["label"] for k, r in _read_back(paths).items()}
    assert labels == {"cat/a": 0, "cat/more/b": 0, "dog/c": 1}
