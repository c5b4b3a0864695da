"""Our shards are webdataset shards: the `webdataset` library reads what sslpipe writes, and sslpipe reads
what the library writes. sslpipe keeps its own reader (curation/shards.py) because shards are untrusted input
(no pickles, no extraction, truncation counted) and must stream from object storage through pyarrow's
filesystems; the format itself stays the field's, so shards move freely between the two."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from curation.shards import Sample, iter_tar_samples, write_shard


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


SAMPLES = [Sample(key=f"2023/01/img{i:03d}", image=_png(i), ext="png", label=i % 3, meta={"i": i})
           for i in (5, 1, 3, 0, 2)]


def test_webdataset_reads_the_shards_sslpipe_writes(tmp_path: Path) -> None:
    path = tmp_path / "ours.tar"
    assert write_shard(SAMPLES, path) == len(SAMPLES)
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    by_key = {s.key: s for s in SAMPLES}
    assert [g["__key__"] for g in got] == sorted(by_key)  # sorted by key, one sample per key
    for g in got:
        want = by_key[g["__key__"]]
        assert g["png"] == want.image
        assert int(g["cls"]) == want.label
        assert json.loads(g["json"]) == want.meta


def test_sslpipe_reads_the_shards_webdataset_writes(tmp_path: Path) -> None:
    path = tmp_path / "theirs.tar"
    with wds.TarWriter(str(path)) as sink:
        for s in SAMPLES:
            sink.write({"__key__": s.key, "png": s.image, "cls": s.label, "json": s.meta})
    with open(path, "rb") as f:
        rows = list(iter_tar_samples(f, str(path)))
    assert [r["read_error"] for r in rows] == [""] * len(SAMPLES)
    assert [r["key"] for r in rows] == [s.key for s in SAMPLES]  # in the writer's order
    for row, s in zip(rows, SAMPLES):
        assert (row["image"], row["ext"], row["label"], json.loads(row["meta"])) == (s.image, "png", s.label, s.meta)
