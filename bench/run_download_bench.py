"""Download benchmarks: the portal against baselines started in the same run.

    .venv/bin/python bench/run_download_bench.py              # full run (~5 min), writes
                                                              # docs/performance.md
    .venv/bin/python bench/run_download_bench.py --quick      # smoke run, prints only
    .venv/bin/python bench/run_download_bench.py --postgres   # PostgreSQL instead of SQLite

Everything runs on 127.0.0.1 and is started and stopped by this script: a temporary instance
(SQLite or a throw-away PostgreSQL database, file:// storage, a private redis-server), the
portal under the production ``gunicorn.conf.py``, a bare Flask ``send_file`` app under the
same config (bench/baseline_app.py), nginx serving the same storage folder, and the portal
in ``PORTAL_SENDFILE=x-accel`` mode behind nginx. Load comes from wrk (same parameters for
every target) and from bench/slow_clients.py. Every server is killed and the temporary
folder removed on exit, Ctrl-C or error.

Measured (targets in brackets):
  a. signed-in 64 KiB downloads, req/s, portal vs bare send_file         [>= 0.8x]
  b. 1 KiB Range of a 4 MiB file, req/s, portal vs bare send_file        [>= 0.8x]
  c. x-accel through nginx vs nginx serving the file itself              [>= 0.5x]
     c‴: the same through a signed link (/d/<token>, granted to nginx too)  [>= 0.5x]
  d. GET /login latency while 1000 slow (20 KB/s) downloads run          [p99 < 100 ms]
     (also against a gthread 2x8 or sync portal, to show the worker choice)
  e. RSS growth of the workers while one client fetches a 5 GiB sparse file [< 50 MB]
  Side by side at -c 32 (issue 19), with nginx direct and copyparty -j1 / -j2 (pip-installed
  into a venv of its own, bench/.venv-copyparty) serving the same objects:
  f. signed-in 64 KiB downloads, tail          [p99 <= 25 ms, max <= 100 ms, no timeouts]
  g. signed-in 1 KiB ranges of a 1 GiB file, tail                          [the same]
  h. signed-in 64 KiB downloads, req/s, portal vs copyparty -j2            [>= 1.2x]
Every wrk run is reported with req/s, p50, p99, max latency and wrk's timeouts.

The code: download_harness.py (processes, wrk, instance, servers), this file (the phases
and the command line), download_report.py (tables and docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from download_harness import (
    COPYPARTY_SPEC,
    NGINX_DIRECT,
    NGINX_XACCEL_FALLBACK,
    RANGE_FILE_GIB,
    ROOT,
    TAIL_RANGE,
    VENV_BIN,
    BenchError,
    Instance,
    Run,
    Server,
    WrkResult,
    check_body,
    children,
    cookie_pairs,
    copyparty,
    copyparty_python,
    copyparty_share,
    cpu_seconds,
    fetch,
    free_port,
    frozen,
    generated_conf,
    gunicorn,
    login,
    nginx,
    object_path,
    percentile,
    prepare,
    probe_latency,
    quiet_cpus,
    render_deploy_conf,
    rss_kib,
    settle,
    wrk,
)
from download_report import (
    busy_note,
    compare_label,
    details,
    fmt_ms,
    history_after,
    load,
    old_analysis,
    other_sections,
    render,
    rows,
    side_by_side,
    table,
)

DOC = ROOT / "docs" / "performance.md"


# ----------------------------------------------------------------------------- the run


def slow_phase(run: Run, args: argparse.Namespace, server: Server, label: str,
               inst: Instance, cookie: str) -> dict:
    """1000 slow downloads of the sparse file while probing GET /login latency."""
    out_file = run.logs / f"slow-{label}.json"
    with open(out_file, "wb") as out:
        slow = subprocess.Popen(
            [sys.executable, ROOT / "bench" / "slow_clients.py", "--port", str(server.port),
             "--path", f"/files/{inst.ids['bench sparse']}/download", "--cookie", cookie,
             "--clients", str(args.slow_clients), "--rate", str(args.slow_rate),
             "--duration", str(args.slow_seconds), "--ramp", "3"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    tracker = Server(f"slow-{label}", slow, out_file, stop_signal=signal.SIGINT)
    run.servers.append(tracker)
    try:
        time.sleep(5)  # ramp (3 s) and the first bytes to every client
        until = time.monotonic() + args.slow_seconds - 7
        lat = probe_latency(server.port, "/login", args.probes, 0.1, until, args.probe_timeout)
        slow.wait(args.slow_seconds + 30)
    finally:
        run.stop(tracker)
    try:
        clients = json.loads(out_file.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        clients = {"error": out_file.read_text(errors="replace")[-500:]}
    failed = sum(1 for x in lat if x == float("inf"))
    result = {"label": label, "probes": len(lat), "failed": failed,
              "p50": percentile(lat, 50), "p95": percentile(lat, 95),
              "p99": percentile(lat, 99), "clients": clients}
    print(f"  {label:<38} probes {len(lat)} failed {failed}  p50 {fmt_ms(result['p50'])}  "
          f"p95 {fmt_ms(result['p95'])}  p99 {fmt_ms(result['p99'])}  clients {clients}",
          flush=True)
    return result


def warm_page_cache(path: Path) -> None:
    """Read the file once, so that the first server measured does not pay for filling the
    page cache (zero pages of the sparse file) and the second one get it for free."""
    started = time.monotonic()
    fd, null = os.open(path, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            sent = os.sendfile(null, fd, offset, min(1 << 30, size - offset))
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(fd)
        os.close(null)
    print(f"  page cache warmed in {time.monotonic() - started:.1f} s", flush=True)


def rss_phase(run: Run, server: Server, path: str, headers: dict, size: int) -> dict:
    """One curl fetches the whole file to /dev/null while the workers' RSS is sampled."""
    workers = children(server.proc.pid)
    before = {pid: rss_kib(pid) for pid in workers}
    cpu_before = {pid: cpu_seconds(pid) for pid in workers}
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], rss_kib(pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    hdr = [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
    started = time.monotonic()
    try:
        done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "300", *hdr,
                               "-w", "%{http_code} %{size_download}",
                               f"http://127.0.0.1:{server.port}{path}"],
                              capture_output=True, text=True, check=False, timeout=330)
    finally:
        stop.set()
        sampler.join()
    seconds = time.monotonic() - started
    code, _, got = done.stdout.partition(" ")
    growth = max(peak[p] - before[p] for p in workers) / 1024
    total_growth = (sum(peak.values()) - sum(before.values())) / 1024
    cpu = {p: tuple(a - b for a, b in zip(cpu_seconds(p), cpu_before[p], strict=True))
           for p in workers}
    busiest = max(cpu, key=lambda p: sum(cpu[p]))
    result = {"status": code, "bytes": int(got or 0), "complete": int(got or 0) == size,
              "seconds": seconds, "gbit": int(got or 0) * 8 / seconds / 1e9,
              "rss_before_mib": sum(before.values()) / 1024, "growth_mib": growth,
              "total_growth_mib": total_growth, "workers": len(workers),
              "user_cpu": cpu[busiest][0], "sys_cpu": cpu[busiest][1],
              "curl_error": done.stderr.strip()[:200]}
    print(f"  {server.name:<38} {result['status']} {result['bytes']} B in {seconds:.1f} s, "
          f"worker RSS growth {growth:.1f} MiB (all workers {total_growth:.1f} MiB), busiest "
          f"worker CPU user {result['user_cpu']:.2f} s sys {result['sys_cpu']:.2f} s", flush=True)
    return result


def bench(run: Run, args: argparse.Namespace) -> dict:
    """Everything, in an order that keeps the run short; returns the collected results."""
    res: dict = {"notes": [], "wrk": {}, "load_before": os.getloadavg()}
    print("preparing the instance ...", flush=True)
    inst = prepare(run, args)
    res["database"] = inst.database
    env = inst.env

    print("starting servers ...", flush=True)
    portal = gunicorn(run, "portal-gevent", "wsgi:app", env)
    # The bare app records nothing: no analytics flusher process beside its workers.
    baseline = gunicorn(run, "baseline-send_file", "bench.baseline_app:app",
                        dict(env, BENCH_STORAGE_DIR=str(inst.storage),
                             PORTAL_ANALYTICS_FLUSHER="workers"), ready_path="/")
    direct_port = free_port()
    ngx_direct = nginx(run, "direct", generated_conf(run, "direct", NGINX_DIRECT.format(
        port=direct_port, storage=inst.storage)), direct_port, "/objects/")
    cookie = login(portal.port)
    auth = {"Cookie": cookie}
    small_id, public_id = inst.ids["bench 64k"], inst.ids["bench 64k public"]
    big_id = inst.ids["bench 4m"]
    rng = {"Range": "bytes=1000-2023"}
    small_obj = f"/objects/{inst.small_key[:2]}/{inst.small_key[2:4]}/{inst.small_key}"

    problems = [p for p in (
        check_body("portal 64k", portal.port, f"/files/{small_id}/download", auth, 200,
                   inst.small),
        check_body("portal 64k public", portal.port, f"/files/{public_id}/download", {}, 200,
                   inst.small),
        check_body("portal range", portal.port, f"/files/{big_id}/download", {**auth, **rng},
                   206, inst.big[1000:2024]),
        check_body("baseline 64k", baseline.port, f"/f/{inst.small_key}", {}, 200, inst.small),
        check_body("baseline range", baseline.port, f"/f/{inst.big_key}", rng, 206,
                   inst.big[1000:2024]),
        check_body("nginx direct", direct_port, small_obj, {}, 200, inst.small),
    ) if p]
    if problems:
        raise BenchError("a target answers wrongly, numbers would be meaningless:\n"
                         + "\n".join(problems))

    w = res["wrk"]
    url = "http://127.0.0.1:{}{}"
    if args.only_xaccel:
        res["xaccel"] = xaccel_phase(run, args, inst, auth, small_obj, direct_port)
        res["load_after"] = os.getloadavg()
        return res
    print("a. 64 KiB downloads", flush=True)
    w["a_portal"] = wrk(args, "portal signed-in 64 KiB",
                        url.format(portal.port, f"/files/{small_id}/download"), auth)
    w["a_base"] = wrk(args, "bare send_file 64 KiB",
                      url.format(baseline.port, f"/f/{inst.small_key}"), {})
    w["a_public"] = wrk(args, "portal public 64 KiB (no session)",
                        url.format(portal.port, f"/files/{public_id}/download"), {})
    print("b. 1 KiB ranges of a 4 MiB file", flush=True)
    w["b_portal"] = wrk(args, "portal signed-in range",
                        url.format(portal.port, f"/files/{big_id}/download"), {**auth, **rng})
    w["b_base"] = wrk(args, "bare send_file range",
                      url.format(baseline.port, f"/f/{inst.big_key}"), rng)

    print(f"f, g, h. tail latency at c{args.tail_connections}: portal, copyparty, nginx",
          flush=True)
    settle(inst)  # the flusher records a and b first, as before c
    res["tail"] = tail_phase(run, args, inst, portal, auth, direct_port)

    print("c. x-accel behind nginx vs nginx direct", flush=True)
    settle(inst)  # the portal's flusher records a and b first: not c's work, nor its CPU
    res["xaccel"] = xaccel_phase(run, args, inst, auth, small_obj, direct_port)

    print("e. RSS while serving the sparse file", flush=True)
    warm_page_cache(object_path(inst.storage, inst.sparse_key))
    sparse_path = f"/files/{inst.ids['bench sparse']}/download"
    res["rss_portal"] = rss_phase(run, portal, sparse_path, auth, inst.sparse_size)
    res["rss_base"] = rss_phase(run, baseline, f"/f/{inst.sparse_key}", {}, inst.sparse_size)
    run.stop(baseline)
    run.stop(ngx_direct)

    print(f"d. GET /login under {args.slow_clients} slow downloads", flush=True)
    res["idle"] = probe_latency(portal.port, "/login", 50, 0.02, time.monotonic() + 20,
                                args.probe_timeout)
    res["slow_portal"] = slow_phase(run, args, portal, "portal gevent (production)", inst,
                                    cookie)
    run.stop(portal)
    extra = (["--worker-class", "gthread", "--workers", "2", "--threads", "8"]
             if args.compare_worker == "gthread" else
             ["--worker-class", "sync", "--workers", "2"])
    other = gunicorn(run, f"portal-{args.compare_worker}", "wsgi:app", env, extra)
    res["slow_other"] = slow_phase(run, args, other, f"portal {compare_label(args)}", inst,
                                   login(other.port))
    run.stop(other)
    res["load_after"] = os.getloadavg()
    return res


def tail_phase(run: Run, args: argparse.Namespace, inst: Instance, portal: Server,
               auth: dict, direct_port: int) -> dict:
    """Issue 19's side-by-side rows: nginx direct, copyparty -j1 and -j2 and the portal (signed
    in, and public for information) at ``--tail-connections``, for the 64 KiB file and 1 KiB
    ranges of the 1 GiB sparse file; rates, p50 / p99 / max and timeouts of every run.

    Only the server being measured runs: the others' process groups are frozen (SIGSTOP),
    so that neither the portal's background work nor an idle copyparty takes CPU from a
    baseline. The pair behind the ratio target (copyparty -j2, then the portal) is measured
    ``--rounds`` times in a row, as c is: this machine's speed drifts within minutes.
    """
    c = args.tail_connections
    out: dict = {"connections": c, "copyparty": "", "error": "", "rounds": [],
                 "64k": {}, "range": {}}
    key = inst.small_key
    small_obj = f"/objects/{key[:2]}/{key[2:4]}/{key}"
    key = inst.range_key
    range_obj = f"/objects/{key[:2]}/{key[2:4]}/{key}"
    rng = {"Range": TAIL_RANGE}
    first = int(TAIL_RANGE.split("=")[1].split("-")[0])
    expected_range = bytes(1024)  # the sparse file is zeros
    if first + 1024 > inst.range_size:
        raise BenchError(f"{TAIL_RANGE} lies outside the {RANGE_FILE_GIB} GiB file")
    targets = {  # server -> (port, 64 KiB path, range path, headers)
        "nginx direct": (direct_port, small_obj, range_obj, {}),
        "portal signed-in": (portal.port, f"/files/{inst.ids['bench 64k']}/download",
                             f"/files/{inst.ids['bench range 1g']}/download", auth),
    }
    procs: dict[str, Server] = {"portal signed-in": portal}
    if not args.no_copyparty:
        try:
            python, out["copyparty"] = copyparty_python(args.copyparty_spec)
            share = copyparty_share(run, inst)
            for cores in (1, 2):
                name = f"copyparty -j{cores}"
                procs[name] = copyparty(run, f"copyparty-j{cores}", python, share, cores)
                targets[name] = (procs[name].port, "/share/small-64k.bin",
                                 "/share/range-1g.bin", {})
        except (BenchError, OSError) as exc:
            out["error"] = "copyparty: " + " ".join(str(exc).split())[:300]
            print(f"  copyparty not measured: {exc}", flush=True)
            for name in ("copyparty -j1", "copyparty -j2"):
                if name in procs:
                    run.stop(procs.pop(name))
                    targets.pop(name, None)
    problems = [p for name, (port, small, ranged, hdr) in targets.items() for p in (
        check_body(f"{name} 64k", port, small, hdr, 200, inst.small),
        check_body(f"{name} range", port, ranged, {**hdr, **rng}, 206, expected_range)) if p]
    if problems:
        raise BenchError("a tail target answers wrongly:\n" + "\n".join(problems))

    def measure(workload: str, name: str, label: str = "", path: str = "",
                cookie: bool = True, run_name: str = "") -> WrkResult:
        """One wrk run of a server (``label`` and ``path``: another target of the same
        server), the others frozen meanwhile."""
        port, small, ranged, hdr = targets[name]
        headers = {**(hdr if cookie else {}), **(rng if workload == "range" else {})}
        path = path or (small if workload == "64k" else ranged)
        what = "64 KiB" if workload == "64k" else "1 KiB range of 1 GiB"
        with frozen(*[srv for other, srv in procs.items() if other != name]):
            result = wrk(args, f"{label or name} {what}{run_name}",
                         f"http://127.0.0.1:{port}{path}", headers, connections=c)
        out[workload].setdefault(label or name, []).append(result)
        return result

    quiet_cpus()
    for workload in ("64k", "range"):
        for name in ("nginx direct", "copyparty -j1"):
            if name in targets:
                measure(workload, name)
        rounds = args.rounds if workload == "64k" else 1
        for i in range(1, rounds + 1):
            run_name = f" (round {i})" if rounds > 1 else ""
            base = (measure(workload, "copyparty -j2", run_name=run_name)
                    if "copyparty -j2" in targets else None)
            mine = measure(workload, "portal signed-in", run_name=run_name)
            if workload == "64k" and base is not None:
                out["rounds"].append((base, mine))
    measure("64k", "portal signed-in", label="portal public (no session)",
            path=f"/files/{inst.ids['bench 64k public']}/download", cookie=False)
    for name in ("copyparty -j1", "copyparty -j2"):
        if name in procs:
            run.stop(procs[name])
    return out


def xaccel_phase(run: Run, args: argparse.Namespace, inst: Instance, auth: dict,
                 small_obj: str, direct_port: int) -> dict:
    """The portal with PORTAL_SENDFILE=x-accel behind nginx, against nginx direct.

    nginx's event log (deploy/nginx.conf, rendered here) is given to the portal: with it
    the portal grants downloads to nginx, which counts them in that log. The log is read by
    the web workers' flusher (the default: c, c′), then, for comparison, by an importer of
    its own at a lower CPU priority (PORTAL_ANALYTICS_NGINX_IMPORT=external, ``nice -n 10
    flask analytics flush --follow``: c″). After each, how long until every download nginx
    logged is an event in the database is measured.

    This machine's speed drifts by up to 2× within minutes, so each portal run comes right
    after a baseline run of its own, with the portal frozen meanwhile; c is measured
    ``--rounds`` times and the pair with the median ratio reported (all runs are listed).
    """
    out: dict = {"config": "", "error": "", "portal": None, "base": None, "portal4": None,
                 "base4": None, "external": None, "base_external": None, "rounds": [],
                 "link": None, "base_link": None, "drain": None, "drain_external": None}
    events_log = run.logs / "nginx-deploy-portal_events.log"
    env = dict(inst.env, PORTAL_SENDFILE="x-accel", PORTAL_ANALYTICS_NGINX_LOG=str(events_log))
    path = f"/files/{inst.ids['bench 64k']}/download"
    big_path = f"/files/{inst.ids['bench 4m']}/download"
    direct = f"http://127.0.0.1:{direct_port}{small_obj}"
    key = inst.big_key
    direct4 = f"http://127.0.0.1:{direct_port}/objects/{key[:2]}/{key[2:4]}/{key}"
    try:
        with xaccel_servers(run, inst, env, "workers", out) as (port, xportal):
            problem = check_body("x-accel 64k", port, path, auth, 200, inst.small)
            out["range_check"] = check_body(
                "x-accel range", port, big_path,
                {**auth, "Range": "bytes=1000-2023"}, 206, inst.big[1000:2024]) or "ok"
            if problem:
                raise BenchError(f"x-accel answers wrongly, not measured: {problem}")
            quiet_cpus()
            for i in range(1, args.rounds + 1):
                with frozen(xportal):
                    base = wrk(args, f"nginx direct 64 KiB (round {i})", direct, {})
                out["rounds"].append((base, wrk(
                    args, f"portal x-accel via nginx 64 KiB (round {i})",
                    f"http://127.0.0.1:{port}{path}", auth)))
            out["base"], out["portal"] = sorted(
                out["rounds"], key=lambda pair: pair[1].rps / pair[0].rps)[args.rounds // 2]
            # c‴: what a download manager is given, a signed link, granted to nginx too
            link = signed_link(port, auth, inst.ids["bench 64k"])
            problem = check_body("x-accel link", port, link, {}, 200, inst.small)
            if problem:
                raise BenchError(f"the signed link answers wrongly, not measured: {problem}")
            with frozen(xportal):
                out["base_link"] = wrk(args, "nginx direct 64 KiB (before c‴)", direct, {})
            out["link"] = wrk(args, "portal x-accel via nginx 64 KiB, signed link",
                              f"http://127.0.0.1:{port}{link}", {})
            if not check_body("x-accel 4m", port, big_path, auth, 200, inst.big):
                with frozen(xportal):
                    out["base4"] = wrk(args, "nginx direct 4 MiB", direct4, {})
                out["portal4"] = wrk(args, "portal x-accel via nginx 4 MiB",
                                     f"http://127.0.0.1:{port}{big_path}", auth)
            out["drain"] = drain(inst, events_log)
        external = dict(env, PORTAL_ANALYTICS_NGINX_IMPORT="external")
        with xaccel_servers(run, inst, external, "external", out) as (port, xportal):
            importer = run.spawn("importer", ["nice", "-n", "10", VENV_BIN / "flask", "--app",
                                              "wsgi", "analytics", "flush", "--follow"],
                                 external)
            check_body("x-accel 64k", port, path, auth, 200, inst.small)
            quiet_cpus()
            with frozen(xportal, importer):
                out["base_external"] = wrk(args, "nginx direct 64 KiB (before c″)", direct, {})
            out["external"] = wrk(args, "portal x-accel, log read by a niced importer",
                                  f"http://127.0.0.1:{port}{path}", auth)
            out["drain_external"] = drain(inst, events_log, out["drain"])
            run.stop(importer)
    except BenchError as exc:
        out["error"] = str(exc).splitlines()[0]
        print(f"  x-accel not measured: {exc}", flush=True)
    return out


def signed_link(port: int, auth: dict, file_id: int) -> str:
    """The path of a fresh signed link to the file, minted by the signed-in user (the
    account page's CSRF token, POST /api/files/<id>/links)."""
    status, headers, body = fetch(port, "/", auth)
    meta = re.search(rb'<meta[^>]+name="csrf-token"[^>]*content="([^"]*)"', body)
    if status != 200 or meta is None:
        raise BenchError(f"GET / answered {status} without a CSRF token")
    # the page stored its CSRF token in the session: send the cookie it set back
    jar = {**dict(pair.split("=", 1) for pair in auth["Cookie"].split("; ")),
           **cookie_pairs(headers)}
    status, _, body = fetch(port, f"/api/files/{file_id}/links", {
        "Cookie": "; ".join(f"{k}={v}" for k, v in jar.items()),
        "X-CSRFToken": meta.group(1).decode(), "Content-Type": "application/json"},
        method="POST", body=b"{}")
    if status != 201:
        raise BenchError(f"minting a link answered {status}: {body[:200]!r}")
    return urlsplit(json.loads(body)["url"]).path


@contextlib.contextmanager
def xaccel_servers(run: Run, inst: Instance, env: dict, name: str, out: dict):
    """An x-accel portal and nginx in front of it (deploy/nginx.conf when it can be
    adapted); yields nginx's port and the portal, stops both after."""
    xportal = gunicorn(run, f"portal-xaccel-{name}", "wsgi:app", env)
    port = free_port()
    deploy = ROOT / "deploy" / "nginx.conf"
    ngx = None
    try:
        try:
            conf = render_deploy_conf(deploy.read_text(), run, port, xportal.port, inst.storage)
            ngx = nginx(run, "deploy", conf, port, "/healthz")
            out["config"] = "deploy/nginx.conf (ports and paths replaced)"
        except (BenchError, OSError) as exc:
            out["config"] = ("generated fallback (deploy/nginx.conf could not be used: "
                             f"{' '.join(str(exc).split())[:300]})")
            ngx = nginx(run, "xaccel", generated_conf(run, "xaccel", NGINX_XACCEL_FALLBACK.format(
                port=port, upstream=xportal.port, storage=inst.storage)), port, "/healthz")
        print(f"  nginx config: {out['config']}", flush=True)
        yield port, xportal
    finally:
        if ngx is not None:
            run.stop(ngx)
        run.stop(xportal)


def drain(inst: Instance, events_log: Path, before: dict | None = None,
          timeout: float = 300) -> dict:
    """Wait until every download nginx logged is an event in the database; how long that
    took after the load stopped, and the counts (those after ``before``, an earlier
    drain's result: the phases share the log and the database)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(inst.env["PORTAL_DATABASE_URL"])
    started = time.monotonic()
    logged = offset = 0
    try:
        while True:
            time.sleep(1.2)  # nginx writes its log buffer at least once a second
            with open(events_log, "rb") as fh:  # only what was added (a full scan of
                fh.seek(offset)  # 100 MB a second would take a CPU from the importer)
                data = fh.read()
            data = data[:data.rfind(b"\n") + 1]
            offset += len(data)
            logged += data.count(b'"status":200') + data.count(b'"status":206')
            with engine.connect() as conn:
                stored = conn.execute(text(
                    "SELECT count(*) FROM download_events WHERE served_from = 'nginx'")).scalar()
            waited = time.monotonic() - started
            if stored >= logged or waited > timeout:
                break
    finally:
        engine.dispose()
    result = {"logged": logged - (before or {}).get("logged_total", 0),
              "stored": stored - (before or {}).get("stored_total", 0), "seconds": waited,
              "logged_total": logged, "stored_total": stored}
    print(f"  importer: {result['stored']:,} of {result['logged']:,} logged downloads recorded "
          f"{waited:.1f} s after the load stopped", flush=True)
    return result


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slow-clients", type=int, default=1000)
    p.add_argument("--slow-rate", type=int, default=20_000, help="bytes/s per slow client")
    p.add_argument("--slow-seconds", type=int, default=35)
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--probe-timeout", type=float, default=2.0)
    p.add_argument("--big-gib", type=float, default=5.0, help="size of the sparse file")
    p.add_argument("--compare-worker", choices=("gthread", "sync"), default="gthread")
    p.add_argument("--postgres", nargs="?", const="postgresql://postgres@127.0.0.1:5432/test",
                   default=None, metavar="ADMIN_URL",
                   help="use a throw-away PostgreSQL database created through ADMIN_URL")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    p.add_argument("--doc", type=Path, default=DOC, help="where to write the report")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                   help="first wait up to this long for the 1-minute load average to drop "
                        "below 1.5 (other processes skew every number)")
    p.add_argument("--tail-connections", type=int, default=32,
                   help="wrk connections of the side-by-side tail rows f, g, h (issue 19)")
    p.add_argument("--no-copyparty", action="store_true",
                   help="leave copyparty out of the side-by-side rows (h is not measured)")
    p.add_argument("--copyparty-spec", default=COPYPARTY_SPEC,
                   help="what pip installs into bench/.venv-copyparty")
    p.add_argument("--rounds", type=int, default=3,
                   help="paired (nginx direct, portal) rounds of c; the median is reported")
    p.add_argument("--only-xaccel", action="store_true",
                   help="only c, c′ and c″ (x-accel behind nginx), no doc")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (logs)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s wrk, 200 slow clients for 15 s, 1 GiB, no doc")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.only_xaccel:
        args.no_doc = True
    if args.quick:
        args.duration, args.warmup, args.slow_clients = 3, 1, 200
        args.slow_seconds, args.probes, args.big_gib, args.no_doc = 15, 50, 1.0, True
    return args


def raise_nofile(want: int) -> None:
    """Enough descriptors for the slow clients and the servers (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the doc."""
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/run_download_bench.py",
                          *(sys.argv[1:] if argv is None else argv)])
    for tool in ("wrk", "curl", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is required (apt-get install -y {tool})", file=sys.stderr)
            return 2
    raise_nofile(args.slow_clients * 3 + 1024)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        time.sleep(5)
    started, t0 = datetime.now(UTC), time.monotonic()
    run = Run(keep=args.keep_tmp)
    try:
        res = bench(run, args)
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        run.close()
    seconds = time.monotonic() - t0
    print(f"\nload average before {load(res['load_before'])}, after {load(res['load_after'])}"
          f"{busy_note(res)}")
    print(table(rows(res, args)))
    print()
    print(side_by_side(res.get("tail")))
    print()
    print(details(res, args))
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        rest = other_sections(args.doc)
        try:
            history = history_after(args.doc.read_text())
        except OSError:
            history = ""
        args.doc.write_text(render(res, args, command, started, seconds,
                                   old_analysis(args.doc), history)
                            + (f"\n{rest}\n" if rest else ""))
        print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
