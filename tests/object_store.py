"""A real S3-compatible server on 127.0.0.1 for tests: moto's server, with IAM checks switched on.

With IAM on, the server refuses what a real bucket refuses: requests without credentials,
unknown keys and users without permission. Tests get keys of a user allowed everything
(``env``), one allowed to read only (``read_only_env``) and one allowed nothing (``denied_env``),
and set them the standard way (``AWS_ACCESS_KEY_ID`` ...), exactly as a user would.

Use the ``moto_s3`` fixture (``from tests.object_store import moto_s3  # noqa: F401``).
"""

from __future__ import annotations

import logging

import json
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow.fs as pafs
import pytest

BUCKET = "sslpipe-test"
_ALLOW_ALL = json.dumps({"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
# moto authorises a bucket HEAD as s3:HeadBucket (AWS: s3:ListBucket); both are read rights
_READ_ONLY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"], "Resource": "*"}]})


@dataclass
class MotoS3:
    """A running moto server: its endpoint, one bucket, and the keys of a user allowed everything
    (``env``), one allowed to read only (``read_only_env``) and one allowed nothing (``denied_env``)."""

    endpoint: str
    env: dict[str, str]
    read_only_env: dict[str, str]
    denied_env: dict[str, str]
    server: object = field(repr=False)

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=self.endpoint, region="us-east-1",
                                 access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def objects(self, prefix: str = BUCKET) -> list[str]:
        """Every object key under ``prefix`` (bucket/...), sorted."""
        infos = self.filesystem().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def start_moto_s3() -> MotoS3:
    """Start moto's server on a free loopback port, create the bucket and two IAM users, then switch
    on authentication (moto's ``reset-auth``: from now on every request is checked)."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    # the server runs in this process: its request log (and the tracebacks it logs for the HTTP 500 it
    # answers a request without keys) is the test harness's, not output of the sslpipe run under test
    logging.getLogger("werkzeug").disabled = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its state per process, not per server: start from an empty store every time
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
             "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    keys = {}
    for user, policy in (("runner", _ALLOW_ALL), ("reader", _READ_ONLY), ("nobody", None)):
        iam.create_user(UserName=user)
        if policy:
            iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=policy)
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def env_of(user: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": keys[user]["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": keys[user]["SecretAccessKey"],
                # no instance metadata service here: the SDK must not wait for one
                "AWS_EC2_METADATA_DISABLED": "true"}

    return MotoS3(endpoint, env_of("runner"), env_of("reader"), env_of("nobody"), server)


def stop_moto_s3(s3: MotoS3) -> None:
    """Stop the server and switch moto's authentication off again (it is a process-wide setting)."""
    from moto import settings

    s3.server.stop()  # type: ignore[attr-defined]
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


@pytest.fixture()
def moto_s3(monkeypatch, tmp_path_factory) -> Iterator[MotoS3]:
    """The server, with this process's environment set to the allowed user's keys and endpoint, the AWS
    credential and config files pointed at nothing (the machine user's ~/.aws stays out), and local copies
    (``SSLPIPE_SCRATCH``) in the test's own temp folder."""
    pytest.importorskip("moto.server", reason="install moto[server] for the object-storage tests")
    s3 = start_moto_s3()
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("aws")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-config"))
    monkeypatch.setenv("SSLPIPE_SCRATCH", str(home / "scratch"))
    try:
        yield s3
    finally:
        stop_moto_s3(s3)
