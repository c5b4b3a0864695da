"""Hostile and broken input (issue 10): every case ends in a recorded reason or a one-line error.

Each case builds a real hostile input (tarfile, PIL, zlib, pyarrow, pickle, torch) and runs it
through the code a user runs: the tar and parquet readers via Ray Data, ``pipelines.curate.curate``,
``sslpipe shard`` (``shard_source``) and the ``sslpipe`` command line. The tar cases share one
curate run and one ``shard_source`` run over a directory of small shards, one shard per case, so a
case's rows are those whose ``source`` is its shard; parquet cases share one Ray Data read. For
every case we check the exact reason, that every input row appears exactly once (kept + removed =
input), and for payload cases that the file the payload would create does not exist.

The exposure tests check that the Ray dashboard sslpipe starts listens on 127.0.0.1 and that
credentials given in a storage uri or the environment are never echoed to the terminal or written
into a run directory, shard directory or Ray's session logs.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.ingest import iter_samples
from pipelines.readers import read_shards
from curation.image_checks import inspect_batch
from curation.manifest import check_conservation
from curation.validate import ValidationRules
from pipelines.cli import main as cli_main
from pipelines.config import CurateConfig, load_config
from pipelines.sources import shard_source

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- builders


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: proof of execution is a new file on disk."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def noise_png(seed: int, width: int = 24, height: int = 24) -> bytes:
    """A real PNG of random pixels: decodes fine, passes every curation rule, unique per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def noise_jpeg(seed: int, side: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` zeros: a few kB on disk, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed pixels
    comp, rows = zlib.compressobj(9), 500  # zeros in blocks of rows: cheap to compress, never held whole
    idat = b"".join(comp.compress(row * min(rows, height - start)) for start in range(0, height, rows)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tar_of(members: list, fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8") -> bytes:
    """A tar of (name, bytes) pairs and ready-made TarInfo headers (links, devices), in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding=encoding) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            name, payload = m
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "", **pax: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    if pax:
        info.pax_headers = dict(pax)
    return info


def with_pax_path(name: str, path: str, payload: bytes) -> tarfile.TarInfo:
    """A member whose ustar header says ``name`` and whose pax header overrides it with ``path``."""
    info = tarfile.TarInfo(name)
    info.size, info.pax_headers = len(payload), {"path": path}
    return info


# --------------------------------------------------------------------------- the tar battery


@dataclass
class TarCase:
    """``build(img, marker, g) -> shard bytes`` (``g``: a key unique to the case, for its good sample);
    ``curate``: expected manifest reason per key ({src} = the shard, {g} = the good key);
    ``shard``: what ``sslpipe shard`` records per key ("ok" = in the index), default the same as ``curate``."""

    build: Callable[[Callable[[], bytes], Path, str], bytes]
    curate: dict[str, str]
    shard: dict[str, str] | None = None
    payload: bool = False
    width: dict[str, int] = field(default_factory=dict)


def _members_with_payload(img, marker: Path, g: str) -> bytes:
    payload = pickle.dumps(_CreatesFile(str(marker)))
    buf = io.BytesIO()
    np.save(buf, np.array([_CreatesFile(str(marker))], dtype=object), allow_pickle=True)
    return tar_of([("k1.pth", payload), ("k1.png", img()), ("k2.pkl", payload), ("k2.png", img()),
                   ("k3.pt", payload), ("k3.png", img()), ("k4.npy", buf.getvalue()), ("k4.png", img()),
                   ("k5.pth", payload)])


def _gzip_cut(img, marker, g) -> bytes:
    data = gzip.compress(tar_of([("g1.png", img()), ("g2.png", noise_png(99, 256, 256))]), mtime=0)
    return data[: len(data) * 2 // 3]


TAR_CASES: dict[str, TarCase] = {
    "dotdot_member": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("../evil.png", img()), ("a/../../up.png", img())]),
        {"{g}": "ok", "{src}#../evil.png": "unsafe_path", "{src}#a/../../up.png": "unsafe_path"}),
    "absolute_member": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("/etc/cron.d/evil.png", img())]),
        {"{g}": "ok", "{src}#/etc/cron.d/evil.png": "unsafe_path"}),
    "pax_header_rewrites_path": TarCase(  # the ustar name looks innocent; the pax 'path' record escapes
        lambda img, m, g: tar_of([(f"{g}.png", img()), with_pax_path("innocent.png", "../../pax.png", b"x" * 10)]),
        {"{g}": "ok", "{src}#../../pax.png": "unsafe_path"}),
    "symlink_member": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), special("link.png", tarfile.SYMTYPE, "/etc/passwd")]),
        {"{g}": "ok", "{src}#link.png": "link_member"}),
    "hardlink_member": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), special("hard.png", tarfile.LNKTYPE, "/etc/shadow")]),
        {"{g}": "ok", "{src}#hard.png": "link_member"}),
    "device_and_fifo_members": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), special("dev.png", tarfile.CHRTYPE),
                               special("fifo.png", tarfile.FIFOTYPE)]),
        {"{g}": "ok", "{src}#dev.png": "special_member", "{src}#fifo.png": "special_member"}),
    "pickle_pth_pkl_pt_npy_members": TarCase(
        _members_with_payload,
        {"k1": "ok", "k2": "ok", "k3": "ok", "k4": "ok", "k5": "no_image_member"}, payload=True),
    "png_bomb_30000x30000": TarCase(  # over PIL's own bomb limit: refused while the header is parsed
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("bomb30k.png", png_bomb(30000, 30000))]),
        {"{g}": "ok", "bomb30k": "too_many_pixels"}, shard={"{g}": "ok", "bomb30k": "ok"}),
    "png_bomb_9000x9000": TarCase(  # under PIL's limit, over max_pixels=50M: our header check refuses it
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("bomb9k.png", png_bomb(9000, 9000, 8))]),
        {"{g}": "ok", "bomb9k": "too_many_pixels"}, shard={"{g}": "ok", "bomb9k": "ok"}, width={"bomb9k": 9000}),
    "extreme_dimensions": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("tall.png", noise_png(1, 1, 10000)),
                               ("wide.png", noise_png(2, 10000, 1)), ("dot.png", noise_png(3, 1, 1)),
                               ("strip.png", noise_png(4, 1000, 10))]),
        {"{g}": "ok", "tall": "too_small", "wide": "too_small", "dot": "too_small", "strip": "extreme_aspect"},
        shard={"{g}": "ok", "tall": "ok", "wide": "ok", "dot": "ok", "strip": "ok"}, width={"wide": 10000}),
    "truncated_jpeg": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("cut.jpg", noise_jpeg(5)[:600])]),
        {"{g}": "ok", "cut": "decode_error"}, shard={"{g}": "ok", "cut": "ok"}),
    "text_and_html_as_jpg": TarCase(
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("page.jpg", b"<!doctype html><html>403 Forbidden</html>"),
                               ("notes.jpg", b"just some text, not a jpeg\n")]),
        {"{g}": "ok", "page": "decode_error", "notes": "decode_error"},
        shard={"{g}": "ok", "page": "not_an_image", "notes": "not_an_image"}),
    "non_utf8_member_name": TarCase(  # latin-1 bytes in a GNU header: kept under an escaped, printable key
        lambda img, m, g: tar_of([(f"{g}.png", img()), ("caf\u00e9.png", img())], fmt=tarfile.GNU_FORMAT,
                              encoding="latin-1"),
        {"{g}": "ok", "caf\\xe9": "ok"}),
    "very_long_keys": TarCase(  # 300 and 4000 characters: pax 'path' records
        lambda img, m, g: tar_of([("k" * 300 + ".png", img()), ("d/" * 1000 + "x" * 2000 + ".png", img())]),
        {"k" * 300: "ok", "d/" * 1000 + "x" * 2000: "ok"}),
    "duplicate_key_inside_one_shard": TarCase(  # not adjacent: the reader sees two samples 'k'
        lambda img, m, g: tar_of([("k.png", img()), ("l.png", img()), ("k.png", img())]),
        {"k": "ok", "l": "ok", "k@{src}#1": "duplicate_key"},
        shard={"k": "ok", "l": "ok"}),
    "truncated_gzip_tar": TarCase(
        _gzip_cut, {"g1": "ok", "g2": "no_image_member", "{src}#truncated": "truncated_shard"},
        # `sslpipe shard` reads a compressed tar too (offsets into its uncompressed stream); the sample the cut
        # went through is recorded as truncated, as for a plain tar
        shard={"g1": "ok", "g2": "truncated_shard", "{src}#truncated": "truncated_shard"}),
    "random_bytes_named_tar": TarCase(
        lambda img, m, g: np.random.default_rng(7).bytes(4096), {"{src}#truncated": "truncated_shard"}),
    "bad_labels": TarCase(  # not a number, and a number no int64 column can hold
        lambda img, m, g: tar_of([(f"{g}.png", img()), (f"{g}.cls", b"3"), ("cat.png", img()), ("cat.cls", b"cat"),
                               ("big.png", img()), ("big.cls", b"1" + b"0" * 30)]),
        {"{g}": "ok", "cat": "bad_label", "big": "bad_label"}),
    "bad_metadata": TarCase(  # not json, and json nested past the parser's recursion limit
        lambda img, m, g: tar_of([(f"{g}.png", img()), (f"{g}.json", b'{"a": 1}'), ("nojson.png", img()),
                               ("nojson.json", b"{not json"), ("deep.png", img()), ("deep.json", b"[" * 100_000)]),
        {"{g}": "ok", "nojson": "bad_meta", "deep": "bad_meta"}),
}


def _declared_size_lie(img, marker, g) -> bytes:
    """The second member's header claims 1 GiB of data; the archive ends right after the header."""
    first = img()
    data = bytearray(tar_of([("s1.png", first), ("s2.png", b"x" * 512)]))
    header_at = 512 + (len(first) + 511) // 512 * 512
    # a pax tar writes s2 as one ustar header (short ascii name): patch its size field and checksum
    header = bytearray(data[header_at : header_at + 512])
    assert header[:6] == b"s2.png"
    header[124:136] = b"%011o\x00" % (1 << 30)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(data[:header_at]) + bytes(header) + b"x" * 512


# the sample whose data the cut took: no image in curation, truncated_shard in `sslpipe shard`
TAR_CASES["member_size_beyond_end_of_file"] = TarCase(
    _declared_size_lie, {"s1": "ok", "s2": "no_image_member", "{src}#truncated": "truncated_shard"},
    shard={"s1": "ok", "s2": "truncated_shard", "{src}#truncated": "truncated_shard"})


@pytest.fixture(scope="module")
def tar_battery(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """All tar cases as one directory of shards -> one curate run and one ``sslpipe shard`` run."""
    from pipelines.curate import curate

    root = tmp_path_factory.mktemp("hostile_tars")
    shard_dir, markers = root / "in", {}
    shard_dir.mkdir()
    seed = iter(range(1000, 100000))
    paths = []
    for name, case in TAR_CASES.items():
        markers[name] = root / f"pwned-{name}"
        path = shard_dir / f"{name}.tar"
        path.write_bytes(case.build(lambda: noise_png(next(seed)), markers[name], f"good-{name}"))
        paths.append(str(path))
    result = curate(paths, root / "curated", CurateConfig(near_dedup=False))
    manifest = pq.read_table(result.manifest_path).to_pylist()
    report = shard_source(str(shard_dir / "*.tar"), str(root / "sharded"), shard_size=50)
    index = pq.read_table(report.index_path).to_pylist()
    rejects = pq.read_table(report.rejects_path).to_pylist()
    return {"root": root, "dir": shard_dir, "manifest": manifest, "result": result, "index": index,
            "rejects": rejects, "markers": markers}


@pytest.mark.parametrize("name", sorted(TAR_CASES))
def test_hostile_tar_shard(name: str, tar_battery) -> None:
    case = TAR_CASES[name]
    src = str(tar_battery["dir"] / f"{name}.tar")
    expected = {k.replace("{src}", src).replace("{g}", f"good-{name}"): v for k, v in case.curate.items()}

    rows = [r for r in tar_battery["manifest"] if r["source"] == src]
    got = {r["key"]: r["reason"] for r in rows}
    assert got == expected  # exact reasons, nothing lost, nothing extra
    assert len(rows) == len(got)  # each key once
    assert sum(r["kept"] for r in rows) + sum(not r["kept"] for r in rows) == len(expected)
    assert all(r["kept"] == (r["reason"] == "ok") for r in rows)
    for key, width in case.width.items():
        assert next(r["width"] for r in rows if r["key"] == key) == width  # measured from the header

    # the curated shard holds exactly the kept samples, with their bytes, and nothing hostile
    kept = sorted(k for k, v in expected.items() if v == "ok")
    written = [r for p in tar_battery["result"].shard_paths if Path(p).name == f"{name}.tar" for r in iter_samples(p)]
    assert sorted(r["key"] for r in written) == kept
    assert all(r["read_error"] == "" and r["image"] for r in written)

    # `sslpipe shard` on the same shard: every sample is in the index or in rejects, once, with its reason
    shard_expected = {k.replace("{src}", src).replace("{g}", f"good-{name}"): v
                      for k, v in (case.shard or case.curate).items()}
    indexed = [r["key"] for r in tar_battery["index"] if r["source"] == src]
    rejected = {r["key"]: r["reason"] for r in tar_battery["rejects"] if r["source"] == src}
    if name == "duplicate_key_inside_one_shard":
        assert rejected == {"k": "duplicate_key"}  # the second 'k' is recorded under its own key
        rejected = {}
    assert len(indexed) == len(set(indexed))
    assert {**{k: "ok" for k in indexed}, **rejected} == shard_expected
    if case.payload:
        assert not tar_battery["markers"][name].exists()


def test_payload_markers_are_live(tmp_path: Path) -> None:
    """The pickle payload used above does run when unpickled, so 'no marker' means 'never unpickled'."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(str(marker))))
    assert marker.exists()


def test_bomb_is_refused_from_its_header_without_decoding(tmp_path: Path) -> None:
    """A fresh interpreter checks both bombs: max RSS grows by far less than one decoded bomb (81 MB)."""
    for name, data in (("big", png_bomb(30000, 30000)), ("mid", png_bomb(9000, 9000, 8))):
        (tmp_path / f"{name}.png").write_bytes(data)
    assert len((tmp_path / "big.png").read_bytes()) < 200_000  # small on disk: 900 M pixels declared
    code = (
        "import resource, sys\n"
        "from curation.validate import check_image, ValidationRules\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = [check_image(open(p, 'rb').read(), ValidationRules()) for p in sys.argv[1:]]\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print([(c.reason, c.width, c.height) for c in out], (after - before) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.png"), str(tmp_path / "mid.png")],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    checks, grown_mb = proc.stdout.rsplit(" ", 1)
    assert checks == str([("too_many_pixels", 0, 0), ("too_many_pixels", 9000, 9000)])
    assert int(grown_mb) < 20, f"max RSS grew by {grown_mb} MB while checking two bombs"


def test_training_feed_refuses_a_bomb_before_decoding() -> None:
    """Shards that curation never saw (eval data) go through ``decode_to_array``: same header check."""
    from curation.decode import decode_to_array

    with pytest.raises(ValueError, match="9000x9000 pixels is over"):
        decode_to_array(png_bomb(9000, 9000, 8), 28, 1)


# --------------------------------------------------------------------------- the parquet battery


def _pq(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def _dup_columns(path: Path) -> None:
    png = noise_png(31)
    table = pa.Table.from_arrays([pa.array([png]), pa.array([png])], names=["image", "image"])
    pq.write_table(table, path)


@dataclass
class ParquetCase:
    write: Callable[[Path], None]
    expected: dict[str, str]  # key -> reason ({src} = the file)
    shard: dict[str, str] | None = None  # what `sslpipe shard` records ("ok" = indexed); default: as expected
    detail: tuple[str, ...] = ()  # words the recorded message must hold (the column, the expected schema)


def _parquet_cases() -> dict[str, ParquetCase]:
    img = [noise_png(500 + i) for i in range(12)]
    schema_words = ("expected schema", "image: binary", "key: string", "label (or cls): int64")
    return {
        "missing_image_column": ParquetCase(
            _pq(pa.table({"key": ["a"], "data": [img[0]]})), {"{src}#schema": "no_image_column"},
            detail=("no column 'image'", "'data'", *schema_words)),
        "image_column_of_ints": ParquetCase(
            _pq(pa.table({"key": ["a", "b"], "image": [1, 2]})), {"{src}#schema": "bad_schema"},
            detail=("column 'image' is int64, expected binary", *schema_words)),
        "image_column_of_text": ParquetCase(
            _pq(pa.table({"key": ["a"], "image": ["not bytes"]})), {"{src}#schema": "bad_schema"},
            detail=("column 'image' is string, expected binary", *schema_words)),
        "label_column_of_text": ParquetCase(
            _pq(pa.table({"key": ["a"], "image": [img[1]], "label": ["cat"]})), {"{src}#schema": "bad_schema"},
            detail=("column 'label' is string, expected an integer type", *schema_words)),
        "image_column_twice": ParquetCase(_dup_columns, {"{src}#schema": "bad_schema"},
                                          detail=("column 'image' appears 2 times",)),
        "not_a_parquet_file": ParquetCase(
            lambda path: path.write_text("PAR1? no, a text file\n" * 10), {"{src}#truncated": "truncated_shard"}),
        "escaping_keys": ParquetCase(  # would become escaping member names in the tars we write
            _pq(pa.table({"key": ["esc-good", "../up", "/abs/x", "a/../../b"], "image": img[2:6]})),
            {"esc-good": "ok", "../up": "unsafe_path", "/abs/x": "unsafe_path", "a/../../b": "unsafe_path"}),
        "label_beyond_int64": ParquetCase(
            _pq(pa.table({"key": ["lab-good", "huge"], "image": img[6:8], "label": pa.array([1, 2**63 + 5], pa.uint64())})),
            {"lab-good": "ok", "huge": "bad_label"}),
        "meta_not_json": ParquetCase(
            _pq(pa.table({"key": ["meta-good", "nojson", "deep"], "image": img[8:11],
                          "meta": ['{"a": 1}', "{oops", "[" * 100_000]})),
            {"meta-good": "ok", "nojson": "bad_meta", "deep": "bad_meta"}),
        "null_image": ParquetCase(
            _pq(pa.table({"key": ["none"], "image": pa.array([None], pa.binary())})), {"none": "no_image_member"},
            shard={"none": "no_image_member"}),
        "dotted_keys": ParquetCase(  # file names as keys: a webdataset key ends at the first dot
            _pq(pa.table({"key": ["img001.jpg"], "image": [img[11]]})), {"img001.jpg": "ok"},
            shard={"img001_jpg": "ok"}),
    }


PARQUET_CASES = _parquet_cases()


@pytest.fixture(scope="module")
def parquet_battery(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """All parquet cases in one directory: one Ray Data read + inspect + decide, one ``sslpipe shard``."""
    from pipelines.curate import decide

    root = tmp_path_factory.mktemp("hostile_parquet")
    files = root / "in"
    files.mkdir()
    for name, case in PARQUET_CASES.items():
        case.write(files / f"{name}.parquet")
    ds = read_shards(str(files)).map_batches(inspect_batch, batch_size=256, fn_kwargs={"rules": ValidationRules()})
    meta = pa.concat_tables([t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows],
                            promote_options="permissive")
    manifest = decide(meta, CurateConfig(near_dedup=False))
    check_conservation(meta.column("key").to_pylist(), manifest)
    report = shard_source(str(files / "*.parquet"), str(root / "sharded"), shard_size=50)
    return {"dir": files, "manifest": manifest.to_pylist(), "meta": meta.to_pylist(), "report": report,
            "index": pq.read_table(report.index_path).to_pylist(),
            "rejects": pq.read_table(report.rejects_path).to_pylist()}


@pytest.mark.parametrize("name", sorted(PARQUET_CASES))
def test_hostile_parquet_file(name: str, parquet_battery) -> None:
    case = PARQUET_CASES[name]
    src = str(parquet_battery["dir"] / f"{name}.parquet")
    expected = {k.replace("{src}", src): v for k, v in case.expected.items()}
    rows = [r for r in parquet_battery["manifest"] if r["source"] == src]
    assert {r["key"]: r["reason"] for r in rows} == expected and len(rows) == len(expected)
    for word in case.detail:  # the recorded message names the column and the schema we expect
        assert word in next(r["meta"] for r in rows), (word, rows[0]["meta"])

    shard_expected = {k.replace("{src}", src): v for k, v in (case.shard or case.expected).items()}
    indexed = [r["key"] for r in parquet_battery["index"] if r["source"] == src]
    rejected = [r for r in parquet_battery["rejects"] if r["source"] == src]
    assert len(indexed) + len(rejected) == len(shard_expected)  # every row once: index or rejects
    assert {**{k: "ok" for k in indexed}, **{r["key"]: r["reason"] for r in rejected}} == shard_expected
    for word in case.detail:
        assert word in rejected[0]["detail"]
    if name == "dotted_keys":  # the image is really in the tar under its new key, the old one in the metadata
        shard = parquet_battery["report"].paths[0]
        back = {r["key"]: r for r in iter_samples(shard)}
        assert back["img001_jpg"]["read_error"] == "" and back["img001_jpg"]["image"][:4] == b"\x89PNG"
        assert json.loads(back["img001_jpg"]["meta"]) == {"source_key": "img001.jpg"}


def test_image_folder_with_dotted_file_names_keeps_every_image(tmp_path: Path) -> None:
    """``photo.2020.final.png`` used to be written as key ``cls/photo.2020.final`` and read back without an image."""
    (tmp_path / "src" / "cls").mkdir(parents=True)
    (tmp_path / "src" / "cls" / "photo.2020.final.png").write_bytes(noise_png(1))
    (tmp_path / "src" / "cls" / "plain.png").write_bytes(noise_png(2))
    report = shard_source(str(tmp_path / "src"), str(tmp_path / "out"), shard_size=10)
    back = {r["key"]: r for r in iter_samples(report.paths[0])}
    assert sorted(back) == ["cls/photo_2020_final", "cls/plain"]
    assert all(r["read_error"] == "" and r["image"][:4] == b"\x89PNG" for r in back.values())


# --------------------------------------------------------------------------- checkpoints and configs


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _small_checkpoint_state(**config_overrides):
    from pipelines.config import config_to_dict
    from pipelines.models import build_method_from_config

    base = ["backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16"]
    cfg = load_config(None, base)
    other = load_config(None, base + [f"{k}={v}" for k, v in config_overrides.items()])
    return build_method_from_config(cfg).state_dict(), config_to_dict(other)


def _ckpt_payload(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"method": _CreatesFile(str(marker)), "config": {}}))


def _ckpt_truncated(path: Path, marker: Path) -> None:
    import torch

    weights, config = _small_checkpoint_state()
    torch.save({"method": weights, "config": config}, path)
    path.write_bytes(path.read_bytes()[:2000])


def _ckpt_wrong_weights(path: Path, marker: Path) -> None:
    import torch

    weights, config = _small_checkpoint_state(**{"backbone.width": 16})  # weights of width 8, config says 16
    torch.save({"method": weights, "config": config}, path)


def _ckpt_hostile_config(path: Path, marker: Path) -> None:
    import torch

    weights, _ = _small_checkpoint_state()
    torch.save({"method": weights, "config": {"trian": {"epochs": 1}}}, path)


CHECKPOINT_CASES = {
    "pickle_payload": (_ckpt_payload, "not a loadable sslpipe checkpoint"),
    "truncated_file": (_ckpt_truncated, "not a loadable sslpipe checkpoint"),
    "weights_of_another_model": (_ckpt_wrong_weights, "weights do not match the model its config describes"),
    "config_with_unknown_keys": (_ckpt_hostile_config, "unknown config key 'trian'"),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_CASES))
def test_export_refuses_a_bad_checkpoint(name: str, tmp_path: Path, capsys) -> None:
    build, message = CHECKPOINT_CASES[name]
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    build(evil, marker)
    rc = cli_main(["export", str(evil), str(tmp_path / "out.pt")])
    _one_line_error(capsys, rc, message, str(evil))
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_resume_refuses_a_malicious_checkpoint(ray_session, mnist_digits, tmp_path: Path) -> None:
    from curation.errors import InputError

    """A payload planted as the latest checkpoint of a run: resuming fails, the payload never runs."""
    from pipelines.pretrain import CHECKPOINT_FILE, pretrain

    marker = tmp_path / "pwned"
    planted = tmp_path / "pretrain" / "local_checkpoints" / "epoch_000001" / CHECKPOINT_FILE
    planted.parent.mkdir(parents=True)
    _ckpt_payload(planted, marker)
    images, labels = mnist_digits
    ds = ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(64)])
    cfg = load_config(None, [f"run_dir={tmp_path}", "train.num_workers=0", "train.epochs=1", "train.batch_size=32",
                             "train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32",
                             "method.proj_dim=16", "train.knn_monitor_every=0"])
    with pytest.raises(InputError, match="cannot resume from .*weights-only load refused it") as err:
        pretrain(cfg, ds, tmp_path)
    assert str(planted) in str(err.value) and "\n" not in str(err.value)  # names the file, one line
    assert not marker.exists()


def _bomb_yaml(path: Path, key: str, section: str = "") -> None:
    """A billion-laughs YAML: 8 levels of aliases, 9^9 strings once expanded, under 1 kB on disk."""
    pad = "  " if section else ""
    lines = ([f"{section}:"] if section else []) + [f"{pad}{key}:", f'{pad}  - &a [' + ",".join(['"lol"'] * 9) + "]"]
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{pad}  - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path.write_text("\n".join(lines) + "\n")


CONFIG_CASES = {
    "yaml_python_tag": (lambda p, m: p.write_text(f'run_dir: !!python/object/apply:os.system ["touch {m}"]\n'),
                        "is not valid YAML"),
    "yaml_alias_bomb_in_a_string_key": (lambda p, m: _bomb_yaml(p, "run_dir"), "config key 'run_dir'"),
    "yaml_alias_bomb_in_a_list_key": (lambda p, m: _bomb_yaml(p, "balance_levels", section="curate"),
                                      "config key 'curate.balance_levels[0]'"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_hostile_config_is_one_bounded_line(name: str, tmp_path: Path, capsys) -> None:
    build, needle = CONFIG_CASES[name]
    config, marker = tmp_path / "evil.yaml", tmp_path / "pwned"
    build(config, marker)
    line = _one_line_error(capsys, cli_main(["run", str(config)]), needle)
    assert len(line) < 2100  # the repr of a 9^9-element value is cut, not printed
    assert not marker.exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- exposure


def test_local_ray_dashboard_binds_to_loopback_unless_asked(monkeypatch) -> None:
    """The kwargs ``ensure_ray`` gives ``ray.init`` for a local run (no second Ray is started)."""
    import ray

    from pipelines import ray_runtime
    from pipelines.config import RayConfig

    calls = []
    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", ctx.enable_progress_bars)  # ensure_ray sets it: restore after
    monkeypatch.setattr(ray_runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_runtime.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_runtime.ensure_ray(RayConfig())
    ray_runtime.ensure_ray(load_config(None, ["ray.dashboard_host=0.0.0.0"]).ray)  # the user asked for it
    ray_runtime.ensure_ray(RayConfig(address="ray://head:10001"))  # joining a cluster starts no dashboard
    assert calls[0]["include_dashboard"] is True and calls[0]["dashboard_host"] == "127.0.0.1"
    assert calls[1]["dashboard_host"] == "0.0.0.0"
    assert "dashboard_host" not in calls[2] and "include_dashboard" not in calls[2]
    assert load_config(None).ray.dashboard_host == "127.0.0.1"


def test_local_ray_drops_idle_processes_but_a_cluster_join_and_the_users_env_win(monkeypatch) -> None:
    """A Ray we start reaps idle pooled workers and starts no preemption watcher (one node has no
    preemptible peers); joining a cluster passes neither, and a value the user exported is kept."""
    import os

    import ray

    from pipelines import ray_runtime
    from pipelines.config import RayConfig

    calls = []
    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", ctx.enable_progress_bars)
    monkeypatch.setattr(ray_runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_runtime.ray, "init", lambda **kw: calls.append({**kw, "policy": os.sched_getscheduler(0)}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    ours = os.sched_getscheduler(0)
    ray_runtime.ensure_ray(RayConfig())
    assert calls[0]["_system_config"] == {"num_workers_soft_limit": 0, "idle_worker_killing_time_threshold_ms": 10_000}
    assert calls[0]["policy"] == os.SCHED_BATCH and os.sched_getscheduler(0) == ours
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")  # the user wants it: theirs wins
    ray_runtime.ensure_ray(RayConfig())
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    ray_runtime.ensure_ray(RayConfig(address="ray://head:10001"))
    assert "_system_config" not in calls[2] and calls[2]["policy"] == ours
    ray_runtime.ensure_ray(RayConfig(local_scheduling="normal"))
    assert calls[3]["policy"] == os.SCHED_OTHER and os.sched_getscheduler(0) == ours


def test_scheduling_policy_passes_to_started_processes_and_gives_the_caller_its_own_back() -> None:
    """What a local Ray's processes rely on: a process started inside the block runs SCHED_BATCH,
    and the caller's thread is SCHED_OTHER again afterwards."""
    import os
    import subprocess
    import sys

    from pipelines.ray_runtime import scheduling_policy

    ours = os.sched_getscheduler(0)
    with scheduling_policy("batch") as applied:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert applied and os.sched_getscheduler(0) == os.SCHED_BATCH
    try:
        assert os.sched_getscheduler(child.pid) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == ours
    finally:
        child.kill()
        child.wait()
    with scheduling_policy("normal") as applied:
        assert applied and os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == ours


def test_a_local_rays_worker_processes_run_under_sched_batch(ray_session) -> None:
    """End to end on the session's real Ray (started as sslpipe starts one): the raylet passes the
    policy on to the worker processes it spawns, so an actor's process is SCHED_BATCH."""
    import os

    @ray_session.remote(num_cpus=0)
    class Probe:
        def policy(self) -> int:
            return os.sched_getscheduler(0)

    actor = Probe.remote()
    try:
        assert ray_session.get(actor.policy.remote()) == os.SCHED_BATCH
    finally:
        ray_session.kill(actor)


def test_running_dashboard_listens_on_loopback_only(ray_session) -> None:
    """On the session's real Ray: the dashboard url and every listening socket on its port are 127.0.0.1."""
    import psutil  # ray ships it (ray/thirdparty_files), importable once ray is

    from ray._private.worker import get_dashboard_url

    host, _, port = get_dashboard_url().rpartition(":")
    assert host == "127.0.0.1"
    listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)]
    assert listening and set(listening) == {"127.0.0.1"}, listening


SECRET, KEY_ID = "SECRETVALUE0hostile0test", "AKIAEXAMPLE0HOSTILE"
CREDENTIAL_URIS = {
    "userinfo": f"s3://{KEY_ID}:{SECRET}@bucket/shards",
    "query": f"s3://bucket/shards?access_key={KEY_ID}&secret_key={SECRET}",
    "gcs_userinfo": f"gs://{KEY_ID}:{SECRET}@bucket/shards",
}


def _credential_verbs(uri: str, tmp: Path) -> dict[str, list[str]]:
    demo = str(REPO / "configs" / "demo.yaml")
    return {
        "shard_src": ["shard", uri, str(tmp / "out")],
        "shard_dest": ["shard", str(tmp / "nothing-here"), uri],
        "run_source": ["run", demo, f"data.source={uri}", f"eval.bank_source={tmp}", f"eval.query_source={tmp}",
                       f"run_dir={tmp / 'run'}"],
    }


@pytest.mark.parametrize("verb", ["shard_src", "shard_dest", "run_source"])
@pytest.mark.parametrize("form", sorted(CREDENTIAL_URIS))
def test_credentials_in_a_uri_are_refused_and_never_echoed(form: str, verb: str, tmp_path: Path, capfd) -> None:
    uri = CREDENTIAL_URIS[form]
    if verb == "shard_dest":
        (tmp_path / "nothing-here").mkdir()
        (tmp_path / "nothing-here" / "a.png").write_bytes(noise_png(1))
    rc = cli_main(_credential_verbs(uri, tmp_path)[verb])
    out, err = capfd.readouterr()
    assert rc == 2 and "credentials inside the uri" in err and "AWS_SECRET_ACCESS_KEY" in err, err
    assert SECRET not in out + err and KEY_ID not in out + err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()  # nothing recorded anywhere


def test_credentials_in_the_environment_never_reach_output_records_or_ray_logs(
        ray_session, mnist_digits, tmp_path: Path, capfd, monkeypatch) -> None:
    """``sslpipe curate`` + ``sslpipe report`` with the secret in the environment (read tasks receive it):
    not in stdout/stderr, the run directory (stages, config, manifest, summary, report), nor Ray's logs."""
    images, labels = mnist_digits
    src, held = tmp_path / "src", tmp_path / "held"
    for root, lo in ((src, 0), (held, 100)):
        for i in range(lo, lo + 40):
            (root / f"d{labels[i]}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / f"d{labels[i]}" / f"{i:04d}.png")
    (src / f"d{labels[0]}" / "junk.png").write_bytes(b"<html>not an image</html>")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "token")
    run = tmp_path / "run"
    rc = cli_main(["curate", str(REPO / "configs" / "demo.yaml"), f"data.source={src}", f"eval.bank_source={held}",
                   f"eval.query_source={held}", f"run_dir={run}", "data.shard_size=25"])
    assert rc == 0
    assert cli_main(["report", str(run)]) == 0
    assert cli_main(["shard", str(src), str(tmp_path / "sharded")]) == 0
    assert cli_main(["run", str(REPO / "configs" / "demo.yaml"), f"data.source={tmp_path / 'missing'}",
                     f"eval.bank_source={held}", f"eval.query_source={held}",
                     f"run_dir={tmp_path / 'run2'}"]) == 2  # an error path too
    out, err = capfd.readouterr()
    assert "[curate] kept" in out and "does not exist" in err
    texts = {"stdout": out, "stderr": err}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    from ray._private.worker import _global_node

    logs = Path(_global_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*") if logs.is_dir() else []:
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert any(name.endswith("manifest.parquet") for name in texts)
    assert any(name.startswith(str(logs)) for name in texts)  # Ray's own logs were searched too
    leaked = [name for name, text in texts.items() if SECRET in text or KEY_ID in text]
    assert leaked == []


def test_redaction_masks_every_credential_form(monkeypatch) -> None:
    from curation.redact import has_credentials, redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for uri in CREDENTIAL_URIS.values():
        assert has_credentials(uri) and SECRET not in redact(uri) and KEY_ID not in redact(uri)
    presigned = f"https://b.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}&X-Amz-Signature={SECRET}"
    assert SECRET not in redact(presigned) and KEY_ID not in redact(presigned)
    assert SECRET not in redact(f"botocore said: bad secret {SECRET}")  # the env value itself
    for clean in ("s3://bucket/shards/shard-{000..009}.tar", "/data/a@b/x.tar", "gs://bucket/k?versionId=3"):
        assert not has_credentials(clean) and redact(clean) == clean


@pytest.mark.parametrize("form", sorted(CREDENTIAL_URIS))
def test_library_entry_points_refuse_credential_uris(form: str, tmp_path: Path) -> None:
    """The same refusal from the functions the CLI, ``sslpipe eval`` and a notebook call, before any I/O."""
    from curation.errors import InputError
    from curation.ingest import expand_uris, open_input
    from pipelines.sources import resolve_location

    uri = CREDENTIAL_URIS[form] + "/shard-000000.tar"
    calls = [lambda: expand_uris(uri), lambda: open_input(uri), lambda: read_shards([uri]),
             lambda: resolve_location(uri, tmp_path / "x", load_config(None)),
             lambda: shard_source(str(tmp_path), uri, 10)]
    for call in calls:
        with pytest.raises(InputError, match="credentials inside the uri") as err:
            call()
        assert SECRET not in str(err.value) and KEY_ID not in str(err.value)
    assert list(tmp_path.iterdir()) == []
