"""Object storage against a real S3-compatible server on 127.0.0.1, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from curation.ingest import expand_uris, open_input_file
from pipelines.readers import read_shards
from pipelines.sources import shard_source
from tests.ingest.helpers import write_digit_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def s3_server(monkeypatch):
    """moto's S3 server on a free loopback port; the standard AWS_* variables point at it."""
    moto_server = pytest.importorskip("moto.server", reason="install moto[server] for the object-storage test")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test-key",
                        "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fs = pafs.S3FileSystem(endpoint_override=f"http://{host}:{port}", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("sslpipe-test")
    yield fs
    server.stop()


def test_shards_round_trip_through_s3(tmp_path: Path, mnist_digits, s3_server, ray_session) -> None:
    images, labels = mnist_digits
    files = write_digit_folder(tmp_path / "digits", images, labels, 50)
    report = shard_source(str(tmp_path / "digits"), "s3://sslpipe-test/pool", shard_size=20)
    assert report.paths == [f"s3://sslpipe-test/pool/shard-{i:06d}.tar" for i in range(3)]
    listed = s3_server.get_file_info(pafs.FileSelector("sslpipe-test/pool"))
    assert {"index.parquet", "rejects.parquet", "summary.json"} <= {i.base_name for i in listed}
    # brace list and glob both resolve against the bucket
    assert expand_uris("s3://sslpipe-test/pool/shard-{000000..000002}.tar") == report.paths
    assert expand_uris("s3://sslpipe-test/pool/shard-*.tar") == report.paths
    # Ray workers were started before the env pointed at the server: the read stage carries it to them
    rows = read_shards("s3://sslpipe-test/pool/shard-{000000..000002}.tar").take_all()
    assert {r["key"]: r["image"] for r in rows} == files
    with open_input_file("s3://sslpipe-test/pool/index.parquet") as f:
        index = pq.read_table(f).to_pylist()
    first = index[0]  # a range read at the indexed offset returns the image
    fs, path = s3_server, first["shard"]
    with fs.open_input_file(f"sslpipe-test/pool/{path}") as f:
        assert f.read_at(first["size"], first["offset"]) == files[first["key"]]


def _shard_cmd(src: Path, dest: Path) -> list[str]:
    # in this process (--workers 0): the same plan and writer as on Ray, with a deterministic kill point;
    # tests/ingest/test_parallel_shard.py kills a job that runs on Ray
    return [sys.executable, "-m", "pipelines.cli", "shard", str(src), str(dest), "--shard-size", "25", "--workers", "0"]


def test_killed_shard_job_resumes_without_losing_or_duplicating(tmp_path: Path, mnist_digits) -> None:
    images, labels = mnist_digits
    src = tmp_path / "digits"
    write_digit_folder(src, images, labels, 3000)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    reference = tmp_path / "reference"
    subprocess.run(_shard_cmd(src, reference), check=True, env=env, cwd=REPO, capture_output=True)

    dest = tmp_path / "killed"
    proc = subprocess.Popen(_shard_cmd(src, dest), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not list(dest.glob("shard-*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # polling for the first finished shard, not waiting for a result
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(dest.glob("shard-*.tar")))
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed: enlarge the input"
    assert 1 <= done_at_kill < 120 and not (dest / "index.parquet").exists()

    rerun = subprocess.run(_shard_cmd(src, dest), env=env, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({120 - done_at_kill} written now)" in rerun.stdout  # finished shards were kept, not redone

    want = pq.read_table(reference / "index.parquet").to_pylist()
    got = pq.read_table(dest / "index.parquet").to_pylist()
    assert len(got) == len(want) == 3000
    assert [r["key"] for r in got] == [r["key"] for r in want]
    assert got == want  # same shard, offset, size and label for every key
    assert not list(dest.glob("*.tmp")) and not list((dest / "_index").glob("*.tmp"))
    for name in ("shard-000000.tar", "shard-000119.tar"):
        assert (dest / name).read_bytes() == (reference / name).read_bytes()


def test_nested_image_folder_in_a_bucket_is_walked_by_ray_tasks(tmp_path: Path, mnist_digits, s3_server,
                                                               ray_session) -> None:
    """Images straight in a bucket (no shared disk on a cluster): listed and sharded by tasks that read the bucket."""
    from curation.planting import encode_png

    images, _ = mnist_digits
    files = {}
    for i in range(30):
        key = f"{2023 + i % 2}/{1 + i % 3:02d}/{1 + i % 2:02d}/cam{i % 2}/img{i:03d}"  # deep: listing tasks walk it
        files[key] = encode_png(images[i])
        with s3_server.open_output_stream(f"sslpipe-test/photos/{key}.png") as f:
            f.write(files[key])
    with s3_server.open_output_stream("sslpipe-test/photos/2023/notes.txt") as f:
        f.write(b"not an image")
    report = shard_source("s3://sslpipe-test/photos", "s3://sslpipe-test/photo-shards", shard_size=8, labels="none")
    assert report.samples == 30 and report.ignored == {"not_an_image_file": 1}
    rows = read_shards("s3://sslpipe-test/photo-shards").take_all()
    assert {r["key"]: r["image"] for r in rows} == files
    with open_input_file("s3://sslpipe-test/photo-shards/summary.json") as f:
        run = json.loads(f.read())["this_run"]
    assert run["ran"] == "ray" and run["listing_tasks"] >= 1
