"""The portal's image and compose.yaml's stack, run with podman as a campus would run them.

The image is built from the repository's Containerfile; the stack is compose.yaml unchanged,
started stage by stage by deploy/compose/start.sh (podman 4.3 here: see that script). The
images it names for PostgreSQL, Redis, nginx and MinIO cannot be pulled on CI, so stand-ins
built from Debian's packages carry those names (tests/standins/README.md: PostgreSQL 15 for
postgres:16, nginx 1.22, rclone's S3 server for MinIO). Through nginx: sign-in, a tus upload,
aria2c -x8 and a wget -c resume, the download in the analytics API; one node stopped while
the other serves; the whole stack stopped and started with nothing lost. Then the image alone:
the embedded default on a volume, and SIGTERM during a download. Last, deploy/systemd/ run by
systemd as PID 1 in a container that stands for the VM of docs/deploy.md.

Selected with ``-m container``; skipped without podman (failed under CI=true), which
``bash scripts/container-setup.sh`` installs and configures as root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from podmanstack import (
    ROOT,
    STANDINS,
    STANDINS_DIR,
    ComposeProject,
    build,
    build_standins,
    free_network_prefix,
    podman,
    prune_earlier_builds,
    require_podman,
)
from servers import Browser, request, require_tool, sha256_file, stop_process

from tests.helpers import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.container]

MiB = 1 << 20
#: This run's name: its compose project, containers, volumes and image tags, so that two runs
#: on one machine (CI and someone's own) never share one.
RUN = f"portaltest{os.getpid()}"
IMAGE = "localhost/campus-portal:test"  # the tag podman's build cache follows
PASSWORD = "container-pass-1"
#: How long each stage took, printed at the end of the module (pytest -s shows it).
TIMES: dict[str, float] = {}


def test_compose_names_the_images_the_stand_ins_stand_for():
    text = (ROOT / "compose.yaml").read_text()
    for image in STANDINS.values():
        assert f"image: {image}\n" in text, image


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The portal's image, built from the Containerfile; the stand-ins beside it."""
    require_podman()
    TIMES["image build"] = build(IMAGE, ROOT)
    mine = f"localhost/campus-portal:{RUN}"  # what this run runs, whatever IMAGE becomes
    podman("tag", IMAGE, mine)
    TIMES["stand-ins build"] = build_standins(tmp_path_factory.mktemp("standins"))
    yield mine
    podman("rmi", mine, check=False)  # the tag only, unless no other names the image
    prune_earlier_builds()
    print("\ncontainer stack, seconds: "
          + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in TIMES.items()))


@pytest.fixture(scope="module")
def stack(image, tmp_path_factory):
    """compose.yaml up, with a fresh project, network and volumes (removed afterwards)."""
    project = ComposeProject(
        tmp_path_factory.mktemp("stack"), name=RUN, image=image,
        # a test bed without TLS: the session cookie must travel over plain HTTP
        settings={"PORTAL_SESSION_COOKIE_SECURE": "false",
                  "PORTAL_REMEMBER_COOKIE_SECURE": "false",
                  # not the default network, which a real stack on this host may hold
                  "NETWORK_PREFIX": free_network_prefix()}).write()
    project.down()  # what an interrupted run left
    try:
        TIMES["compose up (fresh volumes)"] = project.start()
        yield project
    finally:
        project.down()


@pytest.fixture(scope="module")
def people(stack):
    """A staff member who uploads and an admin who reads the analytics."""
    stack.exec("portal-1", "user", "create", "teacher", "--password", PASSWORD, "--role", "staff")
    stack.exec("portal-1", "user", "create", "dean", "--password", PASSWORD, "--role", "admin")
    return Browser(stack.base_url).login("teacher", PASSWORD)


def tus_upload(browser: Browser, data: bytes, chunk: int, **metadata: str) -> int:
    """Upload ``data`` with tus 1.0 as the browser's user, ``chunk`` bytes per PATCH, through
    whatever answers at its address; the new file's id (Upload-File-Id)."""
    encoded = ",".join(f"{key} {base64.b64encode(value.encode()).decode()}"
                       for key, value in metadata.items())
    headers = {"Tus-Resumable": "1.0.0", "X-CSRFToken": browser.csrf}
    create = urllib.request.Request(
        f"{browser.base_url}/api/uploads/", data=b"", method="POST",
        headers={**headers, "Upload-Length": str(len(data)), "Upload-Metadata": encoded})
    with browser.opener.open(create, timeout=30) as response:
        assert response.status == 201
        url = urllib.parse.urljoin(f"{browser.base_url}/api/uploads/",
                                   response.headers["Location"])
    offset, file_id = 0, None
    while offset < len(data):
        patch = urllib.request.Request(
            url, data=data[offset:offset + chunk], method="PATCH",
            headers={**headers, "Upload-Offset": str(offset),
                     "Content-Type": "application/offset+octet-stream"})
        with browser.opener.open(patch, timeout=120) as response:
            assert response.status == 204
            offset = int(response.headers["Upload-Offset"])
            file_id = response.headers.get("Upload-File-Id")
    assert file_id, "the last PATCH named no file"
    return int(file_id)


def session_cookie(browser: Browser) -> str:
    """The Cookie header of the browser's session, for the command-line clients."""
    return "Cookie: " + "; ".join(f"{c.name}={c.value}" for c in browser.jar)


def file_stats(base_url: str, file_id: int) -> dict:
    """/api/analytics/files/<id>?days=1 as the admin."""
    admin = Browser(base_url).login("dean", PASSWORD)
    with admin.opener.open(f"{base_url}/api/analytics/files/{file_id}?days=1",
                           timeout=30) as response:
        return json.loads(response.read())


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> None:
    """Run a download client to its end; fail with its output unless it succeeds."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, (cmd[0], done.stdout[-2000:], done.stderr[-2000:])


@pytest.fixture(scope="module")
def lecture(stack, people):
    """A 12 MiB recording uploaded with tus through nginx: (file id, bytes)."""
    data = os.urandom(12 * MiB + 123)
    file_id = tus_upload(people, data, 4 * MiB, filename="第三讲.mp4", title="第三讲 录像",
                         category="课程资料", access="login")
    return file_id, data


def test_upload_then_aria2c_and_a_wget_resume_through_nginx_reach_the_analytics(
        stack, people, lecture, tmp_path):
    file_id, data = lecture
    url = f"{stack.base_url}/files/{file_id}/download"
    cookie = session_cookie(people)
    first_byte = time.monotonic()
    run([require_tool("aria2c"), "-x8", "-s8", "-k1M", "--min-split-size=1M", "-q",
         f"--header={cookie}", "-d", str(tmp_path), "-o", "aria2c.mp4", url], tmp_path)
    TIMES["aria2c -x8 of 12 MiB"] = time.monotonic() - first_byte
    assert sha256_file(tmp_path / "aria2c.mp4") == hashlib.sha256(data).hexdigest()

    # wget -c: the first 5 MiB are on disk already, it asks for the rest
    (tmp_path / "wget.mp4").write_bytes(data[:5 * MiB])
    run([require_tool("wget"), "-q", "-c", "--header", cookie, "-O", "wget.mp4", url], tmp_path)
    assert (tmp_path / "wget.mp4").read_bytes() == data

    def counted():
        stats = file_stats(stack.base_url, file_id)
        return stats if stats["bytes_served"] >= len(data) + len(data) - 5 * MiB else None

    stats = wait_for(counted, what="the downloads in /api/analytics/files/<id>")
    assert stats["downloads"] >= 1 and stats["requests"] >= 2, stats


def pages_and_downloads_answer(stack: ComposeProject, browser: Browser, file_id: int,
                               data: bytes) -> None:
    """The catalog, the file's page, a sign-in and a download, each a few times."""
    for _ in range(4):
        for path in ("/", f"/files/{file_id}"):
            status, _ = browser._open(path)
            assert status == 200, path
        with browser.opener.open(f"{stack.base_url}/files/{file_id}/download",
                                 timeout=60) as response:
            assert response.read() == data
    Browser(stack.base_url).login("teacher", PASSWORD)


#: nginx leaves a node that failed alone this long (deploy/compose/nginx-conf.sh).
FAIL_TIMEOUT = 10


def test_with_one_node_stopped_the_other_serves(stack, people, lecture):
    file_id, data = lecture
    for down in ("portal-1", "portal-2"):  # the second round: portal-1 came back
        podman("stop", "-t", "45", stack.container(down))
        started = time.monotonic()
        pages_and_downloads_answer(stack, people, file_id, data)
        TIMES[f"12 requests with {down} stopped"] = time.monotonic() - started
        podman("start", stack.container(down))
        stack.healthy(down)
        # nginx asks a node it found down again once FAIL_TIMEOUT has passed, on a request:
        # until then the node that came back gets nothing (and with the other one stopped
        # too, every request is a 502)
        time.sleep(FAIL_TIMEOUT + 1)
        pages_and_downloads_answer(stack, people, file_id, data)


def test_stopping_and_starting_the_stack_loses_nothing(stack, people, lecture):
    file_id, data = lecture
    second = os.urandom(3 * MiB)
    assert tus_upload(people, second, 2 * MiB, filename="第三讲.mp4",
                      file_id=str(file_id)) == file_id
    # a new version waits until its owner publishes it
    people.opener.open(urllib.request.Request(
        f"{stack.base_url}/admin/files/{file_id}/versions/2/publish", method="POST",
        data=urllib.parse.urlencode({"csrf_token": people.csrf}).encode()), timeout=60).close()
    kept = people.mint_link(file_id, version=1)["url"]
    revoked = people.mint_link(file_id)["url"]
    people.revoke_link(revoked)
    with people.opener.open(f"{stack.base_url}/files/{file_id}/download", timeout=60) as got:
        assert got.read() == second
    before = wait_for(lambda: (s := file_stats(stack.base_url, file_id))["requests"] >= 3 and s,
                      what="the third download counted")

    TIMES["compose stop"] = stack.stop()
    started = time.monotonic()
    TIMES["compose up again"] = stack.start()

    browser = Browser(stack.base_url).login("teacher", PASSWORD)  # the user, the password
    for version, expected in ((2, second), (1, data)):
        with browser.opener.open(f"{stack.base_url}/files/{file_id}/download?version={version}",
                                 timeout=60) as response:
            assert response.read() == expected, version
        TIMES.setdefault("compose up again to the first download", time.monotonic() - started)
    path = urllib.parse.urlsplit(kept).path
    status, _, body = request(stack.base_url, "GET", path)
    assert status == 200 and body == data
    status, _, _ = request(stack.base_url, "GET", urllib.parse.urlsplit(revoked).path)
    assert status == 403  # still revoked
    after = file_stats(stack.base_url, file_id)
    for key in ("downloads", "requests", "bytes_served"):
        assert after[key] >= before[key], (key, before, after)


# ---------------------------------------------------------------------------
# The image alone
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alone(image):
    """The image run with nothing configured, on a named volume: (container, base URL); the
    volume has the container's name."""
    name, volume, port = f"{RUN}-alone", f"{RUN}-alone", free_port()
    podman("rm", "-f", "-v", name, check=False)
    podman("volume", "rm", "-f", volume, check=False)
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "--stop-timeout", "60",
           "-v", f"{volume}:/var/lib/portal", image)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, name)
        yield name, base
    finally:
        podman("rm", "-f", "-v", "-t", "5", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)


def wait_until_serving(base: str, name: str) -> None:
    """Wait for /healthz to answer 200 (degraded: no Redis is configured)."""
    def answers():
        try:
            return request(base, "GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, what=f"{name} serving")
    except BaseException:
        print(podman("logs", "--tail", "40", name, check=False).stderr)
        raise


def add_file(name: str, data: bytes, folder: Path, title: str) -> int:
    """Copy ``data`` into the container and ``campus-portal file add`` it (public); its id."""
    source = folder / f"{title}.bin"
    source.write_bytes(data)
    podman("cp", str(source), f"{name}:/tmp/{source.name}")
    out = podman("exec", name, "campus-portal", "file", "add", f"/tmp/{source.name}",
                 "--title", title, "--access", "public").stdout
    return int(out.strip().splitlines()[-1].split("\t")[0])


def test_the_image_alone_serves_the_embedded_default_from_its_volume(image, alone, tmp_path):
    name, base = alone
    user, *kept = podman("exec", name, "sh", "-c", "id -un; ls /var/lib/portal").stdout.split()
    assert user == "portal" and {"portal.db", "secret_key", "storage"} <= set(kept), kept
    data = os.urandom(2 * MiB)
    file_id = add_file(name, data, tmp_path, "handbook")
    assert request(base, "GET", f"/files/{file_id}/download")[2] == data
    # a new container on the same volume: the same portal
    podman("rm", "-f", "-v", "-t", "30", name)
    podman("run", "-d", "--name", name, "-p",
           f"127.0.0.1:{urllib.parse.urlsplit(base).port}:8000", "--stop-timeout", "60",
           "-v", f"{name}:/var/lib/portal", image)
    wait_until_serving(base, name)
    status, headers, body = request(base, "GET", f"/files/{file_id}/download")
    assert status == 200 and body == data
    assert headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_sigterm_lets_a_running_download_finish_and_records_it(alone, tmp_path):
    name, base = alone
    data = os.urandom(40 * MiB)
    file_id = add_file(name, data, tmp_path, "recording")
    podman("exec", name, "campus-portal", "user", "create", "dean", "--password", PASSWORD,
           "--role", "admin")
    target = tmp_path / "recording.bin"
    client = subprocess.Popen([require_tool("curl"), "-sS", "--limit-rate", "4M", "-o",
                               str(target), f"{base}/files/{file_id}/download"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: target.exists() and target.stat().st_size > MiB,
                 what="the download under way")
        assert client.poll() is None, "the download ended before the SIGTERM"
        stopped = time.monotonic()
        podman("stop", "-t", "60", name, timeout=90)  # SIGTERM to tini, to gunicorn
        TIMES["SIGTERM to exit, a download running"] = time.monotonic() - stopped
        assert client.wait(60) == 0, client.stderr.read()
    finally:
        stop_process(client)
    assert target.read_bytes() == data
    podman("start", name)
    wait_until_serving(base, name)
    stats = wait_for(lambda: (s := file_stats(base, file_id))["bytes_served"] and s,
                     what="the download in the analytics")
    assert stats["bytes_served"] == len(data) and stats["completed"] == 1, stats


# ---------------------------------------------------------------------------
# deploy/systemd/ on a VM
# ---------------------------------------------------------------------------

TIMERS = ("campus-portal-uploads-purge.timer", "campus-portal-analytics-purge.timer")


@pytest.fixture(scope="module")
def vm(image, tmp_path_factory):
    """tests/standins/vm: systemd as PID 1, the portal in /opt/campus-portal, the units of
    deploy/systemd/; with CAP_SYS_ADMIN, without which systemd inside a container leaves out
    the units' mount sandbox (ProtectSystem, PrivateTmp) and says nothing."""
    context = tmp_path_factory.mktemp("vm")
    shutil.copy2(STANDINS_DIR / "vm" / "Containerfile", context)
    shutil.copytree(ROOT / "deploy" / "systemd", context / "systemd")
    tag, name = f"localhost/campus-portal-vm:{RUN}", f"{RUN}-vm"
    TIMES["VM image build"] = build(tag, context, PORTAL_IMAGE=image)
    podman("rm", "-f", "-v", name, check=False)
    podman("run", "-d", "--name", name, "--systemd=always", "--cap-add", "SYS_ADMIN", tag)
    try:
        wait_for(lambda: podman("exec", name, "systemctl", "is-system-running",
                                check=False).stdout.strip() in ("running", "degraded"),
                 what="systemd up in the VM")
        yield name
    finally:
        podman("rm", "-f", "-v", "-t", "10", name, check=False)
        podman("rmi", tag, check=False)


def systemctl(vm: str, *args: str) -> str:
    """``systemctl ARGS`` in the VM; its output."""
    return podman("exec", vm, "systemctl", *args).stdout


def test_the_systemd_units_run_the_installed_portal_in_their_sandbox(vm):
    systemctl(vm, "enable", "--now", "campus-portal-web.service",
              "campus-portal-flusher.service", *TIMERS)
    wait_for(lambda: podman("exec", vm, "curl", "-fsS", "-o", "/dev/null",
                            "http://127.0.0.1:8000/healthz", check=False).returncode == 0,
             what="campus-portal-web.service serving")
    web = systemctl(vm, "show", "campus-portal-web.service", "-p", "ActiveState,StatusText,MainPID")
    assert "ActiveState=active" in web and "StatusText=Gunicorn arbiter booted" in web  # notify
    pid = re.search(r"MainPID=(\d+)", web)[1]
    mounts = dict(line.split()[4:6] for line in podman(
        "exec", vm, "cat", f"/proc/{pid}/mountinfo").stdout.splitlines())
    assert mounts["/"].startswith("ro,"), mounts["/"]  # ProtectSystem=strict
    assert mounts["/var/lib/campus-portal"].startswith("rw,")  # its StateDirectory
    assert "/tmp" in mounts  # PrivateTmp
    assert podman("exec", vm, "stat", "-c", "%U", f"/proc/{pid}",
                  "/var/lib/campus-portal/portal.db").stdout.split() == ["campus-portal"] * 2
    assert systemctl(vm, "is-active", "campus-portal-flusher.service", *TIMERS).split() == [
        "active"] * 3
    systemctl(vm, "start", "campus-portal-uploads-purge.service")  # a timer's one-shot
    assert "Result=success" in systemctl(vm, "show", "campus-portal-uploads-purge.service",
                                         "-p", "Result")
    security = podman("exec", vm, "systemd-analyze", "security", "--no-pager",
                      "campus-portal-web.service").stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security)[1])
    assert exposure <= 4.0, security[-2000:]  # systemd calls up to 4.9 "OK"
    systemctl(vm, "stop", "campus-portal-web.service")
    assert "Result=success" in systemctl(vm, "show", "campus-portal-web.service", "-p", "Result")
