"""Fair shares at an exam-week peak: 60 students on one shared uplink, limits off and on.

    nice -n 10 .venv/bin/python bench/run_fairness_bench.py [--students 60] [--multi 15]
        [--uplink-mib 60] [--seconds 20]

One 200 MB recording, the real gunicorn from gunicorn.conf.py (2 gevent workers, the
zero-copy sendfile) and a private Redis. Between the students and gunicorn sits the
"uplink": a small asyncio proxy in this process that forwards at most --uplink-mib MiB/s in
total, one chunk per connection in turn (first come, first served), as a saturated link
shares itself among TCP connections. Each student is anonymous and has an address of their
own (127.0.1.N; the proxy connects to gunicorn from the same address), so the portal tells
them apart as it tells apart students behind their own addresses.

Most students use one connection; --multi of them run sixteen (as ``aria2c -x16 -s16``
does), on sixteen segments, each waiting Retry-After and asking again when refused. The
run has two phases on the same servers and files:

- limits off (PORTAL_DOWNLOAD_LIMITS unset): what a 16-connection client takes;
- limits on: ``{"anonymous": {"connections": 4, "rate": R}}`` with R = 90 % of the fair
  share of the uplink (so the uplink is not the bottleneck and the pacing itself is seen).

For each phase: each person's share of the bytes in the measuring window (after a warm-up),
Jain's fairness index (1 = all equal; goal >= 0.9), the rate error of limited people (|rate
- R| / R), and p50 / p99 of a page (GET /login, straight to gunicorn, every 50 ms). The
phases run on the same machine one after the other: compare them with each other, not with
other runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from download_harness import (
    MIB,
    VENV_BIN,
    BenchError,
    Run,
    base_env,
    gunicorn,
    object_path,
    percentile,
    probe_latency,
    run_checked,
    start_redis,
    zero_digests,
)

FILE_BYTES = 200 * 1000 * 1000
SMALL_BYTES = 64 * 1024
CHUNK = 64 * 1024


class Uplink:
    """The shared link: forwards at most ``rate`` bytes per second over all connections, in
    chunks handed out first come, first served (a virtual clock, so no connection waits
    twice in a row while others wait)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_free = 0.0

    async def take(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        if self.next_free - now > 0.001:
            await asyncio.sleep(self.next_free - now)

    async def serve(self, listen_port: int, upstream_port: int):
        async def handle(reader, writer):
            peer = writer.get_extra_info("peername")[0]
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", upstream_port, local_addr=(peer, 0))
            except OSError:
                writer.close()
                return

            async def upstream():  # requests: small, not limited
                try:
                    while data := await reader.read(CHUNK):
                        up_writer.write(data)
                        await up_writer.drain()
                except OSError:
                    pass
                finally:
                    up_writer.close()

            async def downstream():
                try:
                    while data := await up_reader.read(CHUNK):
                        await self.take(len(data))
                        writer.write(data)
                        await writer.drain()
                except OSError:
                    pass
                finally:
                    writer.close()

            try:
                await asyncio.gather(upstream(), downstream())
            except asyncio.CancelledError:  # the phase ended
                writer.close()
                up_writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=2048)


class Person:
    """One student: an address, one or sixteen connections, the bytes they received."""

    def __init__(self, index: int, connections: int) -> None:
        self.address = f"127.0.1.{index + 1}"
        self.connections = connections
        self.received = 0
        self.refused = 0
        self.completed = 0


async def one_connection(person: Person, port: int, path: str, span: tuple[int, int] | None,
                         stop: float) -> None:
    """Download (the span of) the file again and again until ``stop``; on 429 / 503 wait
    Retry-After and ask again (a patient client such as curl --retry; aria2c drops it instead)."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(person.address, 0))
        except OSError:
            await asyncio.sleep(0.5)
            continue
        head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
        if span is not None:
            head += f"Range: bytes={span[0]}-{span[1] - 1}\r\n"
        writer.write((head + "\r\n").encode())
        try:
            status_line = await reader.readline()
            fields = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                fields[name.strip().lower()] = value.strip()
            status = int(status_line.split()[1]) if status_line else 0
            if status in (429, 503):
                person.refused += 1
                writer.close()
                await asyncio.sleep(float(fields.get("retry-after", "1")))
                continue
            while loop.time() < stop and (data := await reader.read(CHUNK)):
                person.received += len(data)
            else:
                person.completed += 1
        except (OSError, ValueError, IndexError):
            await asyncio.sleep(0.2)
        finally:
            writer.close()


async def phase(people: list[Person], port: int, path: str, warmup: float,
                seconds: float) -> dict[str, float]:
    """Run every person's connections; each person's bytes per second in the window."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + warmup + seconds + 1
    tasks = []
    for person in people:
        if person.connections == 1:
            tasks.append(one_connection(person, port, path, None, stop))
        else:
            segment = FILE_BYTES // person.connections
            for k in range(person.connections):
                tasks.append(one_connection(person, port, path,
                                            (k * segment, (k + 1) * segment), stop))
    running = [asyncio.ensure_future(t) for t in tasks]
    await asyncio.sleep(warmup)
    before = {p.address: p.received for p in people}
    started = loop.time()
    await asyncio.sleep(seconds)
    elapsed = loop.time() - started
    rates = {p.address: (p.received - before[p.address]) / elapsed for p in people}
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return rates


def jain(values: list[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2)."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else float("nan")


def prepare(run: Run, redis_url: str | None) -> tuple[dict, list[int]]:
    """A production-like instance with one 200 MB public recording and a 64 KiB file
    (sparse objects): their ids."""
    env = base_env()
    env.update({
        "PORTAL_ENV": "production",
        "PORTAL_INSTANCE_PATH": str(run.tmp / "instance"),
        "PORTAL_SECRET_KEY": os.urandom(32).hex(),
        "PORTAL_STORAGE_URL": (run.tmp / "storage").as_uri(),
        "PORTAL_REDIS_URL": redis_url or start_redis(run),
        "PORTAL_DATABASE_URL": f"sqlite:///{run.tmp / 'instance' / 'portal.db'}",
        "PORTAL_GUNICORN_WORKERS": "2",
        "PORTAL_GUNICORN_ACCESSLOG": "",
        "PYTHONUNBUFFERED": "1",
    })
    run_checked([VENV_BIN / "flask", "--app", "wsgi", "db", "upgrade"], env, "db upgrade")
    ids = []
    for size, title in ((FILE_BYTES, "exam recording"), (SMALL_BYTES, "timetable")):
        key, crc = zero_digests(size)
        path = object_path(run.tmp / "storage", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(size)
        out = run_checked([VENV_BIN / "python", "-m", "bench.add_sparse_version", "--key", key,
                           "--size", size, "--crc32", crc, "--title", title,
                           "--filename", f"{title}.bin", "--access", "public"], env, "add file")
        ids.append(int(out.strip().splitlines()[-1]))
    return env, ids


def measure(args, run: Run, env: dict, ids: list[int], name: str, limits: dict | None,
            admission: int = 0) -> dict:
    """One phase on a fresh gunicorn: shares, Jain's index, rate error, page latency (and
    of the small file)."""
    file_id, small_id = ids
    phase_env = dict(env, PORTAL_DOWNLOAD_ADMISSION_CONNECTIONS=str(admission))
    if limits is not None:
        phase_env["PORTAL_DOWNLOAD_LIMITS"] = json.dumps(limits)
    server = gunicorn(run, f"gunicorn-{name}", "wsgi:app", phase_env, ready_path="/healthz")
    people = [Person(i, 16 if i < args.multi else 1) for i in range(args.students)]
    uplink = Uplink(args.uplink_mib * MIB)
    latencies: list[float] = []
    small: list[float] = []

    def pages() -> None:
        until = time.monotonic() + args.warmup + args.seconds
        latencies.extend(probe_latency(server.port, "/login", 100_000, 0.05, until, 5.0))

    def small_files() -> None:
        until = time.monotonic() + args.warmup + args.seconds
        small.extend(probe_latency(server.port, f"/files/{small_id}/download", 100_000, 0.1,
                                   until, 5.0))

    async def main() -> dict[str, float]:
        listen = await uplink.serve(0, server.port)
        port = listen.sockets[0].getsockname()[1]
        probers = [threading.Thread(target=pages, daemon=True),
                   threading.Thread(target=small_files, daemon=True)]
        for prober in probers:
            prober.start()
        try:
            return await phase(people, port, f"/files/{file_id}/download", args.warmup,
                               args.seconds)
        finally:
            listen.close()
            for prober in probers:
                prober.join()

    rates = asyncio.run(main())
    run.stop(server)
    values = [rates[p.address] for p in people]
    total = sum(values) or 1.0
    single = [rates[p.address] for p in people if p.connections == 1]
    multi = [rates[p.address] for p in people if p.connections > 1]
    result = {
        "total_mib_s": total / MIB,
        "jain": jain(values),
        "single_mean_share": statistics.mean(single) / total * len(people),
        "multi_mean_share": statistics.mean(multi) / total * len(people) if multi else 0.0,
        "min_share": min(values) / total * len(people),
        "max_share": max(values) / total * len(people),
        "refused": sum(p.refused for p in people),
        "active": sum(p.connections for p in people),
        "page_p50_ms": percentile(latencies, 50) * 1000,
        "page_p99_ms": percentile(latencies, 99) * 1000,
        "pages": len(latencies),
        "small_p99_ms": percentile(small, 99) * 1000,
        "shares": {p.address: rates[p.address] / total * len(people) for p in people},
    }
    if limits:
        limit = limits["anonymous"]["rate"]
        errors = [abs(r - limit) / limit for r in values]
        result["rate_error_mean"] = statistics.mean(errors)
        result["rate_error_max"] = max(errors)
        result["rate_error_multi_mean"] = statistics.mean(
            abs(r - limit) / limit for r in multi) if multi else 0.0
    return result


def main(argv: list[str] | None = None) -> None:
    """Run both phases and print the table (and --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=60)
    p.add_argument("--multi", type=int, default=15, help="students with 16 connections")
    p.add_argument("--uplink-mib", type=float, default=60.0, help="the uplink, MiB/s")
    p.add_argument("--seconds", type=float, default=20.0, help="measuring window per phase")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--redis-url", default=None)
    p.add_argument("--admission", type=int, default=100,
                   help="a third phase: no person limits, this node budget (0: skip)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    run = Run(keep=args.keep)
    try:
        env, ids = prepare(run, args.redis_url)
        rate = int(0.9 * args.uplink_mib * MIB / args.students)
        limits = {"anonymous": {"connections": 4, "rate": rate}}
        print(f"{args.students} students ({args.multi} with 16 connections), one "
              f"{FILE_BYTES // 10**6} MB file, uplink {args.uplink_mib:g} MiB/s, "
              f"window {args.seconds:g} s after {args.warmup:g} s; limits on: {limits}",
              flush=True)
        results = {"off": measure(args, run, env, ids, "off", None),
                   "on": measure(args, run, env, ids, "on", limits)}
        if args.admission:
            results["admission"] = measure(args, run, env, ids, "admission", None,
                                           args.admission)
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
    finally:
        run.close()
    rows = [("total through the uplink (MiB/s)", "total_mib_s", "{:.1f}"),
            ("Jain's fairness index", "jain", "{:.3f}"),
            ("mean share, 1-connection students", "single_mean_share", "{:.2f}"),
            ("mean share, 16-connection students", "multi_mean_share", "{:.2f}"),
            ("smallest / largest share", None, None),
            ("refused connections (429 / 503, retried)", "refused", "{}"),
            ("page GET /login p50 (ms)", "page_p50_ms", "{:.1f}"),
            ("page GET /login p99 (ms)", "page_p99_ms", "{:.1f}"),
            ("small file (64 KiB) p99 (ms)", "small_p99_ms", "{:.1f}")]
    heads = {"off": "limits off", "on": "limits on",
             "admission": f"admission budget {args.admission}"}
    print("\n| measure | " + " | ".join(heads[k] for k in results) + " |\n| --- |"
          + " ---: |" * len(results))
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{r['min_share']:.2f} / {r['max_share']:.2f}" for r in results.values()]
        else:
            cells = [fmt.format(r[key]) for r in results.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    on = results["on"]
    pad = " - |" * (len(results) - 2)
    print(f"| rate error of limited people, mean / max | - | {on['rate_error_mean']:.1%} / "
          f"{on['rate_error_max']:.1%} |{pad}")
    print(f"| rate error, 16-connection students (mean) | - | "
          f"{on['rate_error_multi_mean']:.1%} |{pad}")
    print("\n(share 1.00 = an equal share of what went through; limit per person "
          f"{rate / MIB:.2f} MiB/s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
