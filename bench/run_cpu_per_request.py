"""CPU time per request: the portal (signed in), a bare send_file app under the same
gunicorn.conf.py, and copyparty -j2, serving the same 64 KiB object to wrk in one run.

    .venv/bin/python bench/run_cpu_per_request.py [--duration 8] [--rounds 2]

Throughput at c32 on two cores is CPU-bound, so the server's own CPU time per request (user
and system, read from /proc for the server's whole process tree over the measured wrk run)
says where the time goes, and moves far less than req/s when the machine is shared. Only the
server measured runs; the others are frozen (SIGSTOP), as in run_download_bench.py. Prints a
Markdown table; docs/performance.md keeps the results.
"""

from __future__ import annotations

import argparse
import sys

from download_harness import (
    BenchError,
    Run,
    children,
    copyparty,
    copyparty_python,
    copyparty_share,
    cpu_seconds,
    frozen,
    gunicorn,
    login,
    prepare,
    wrk,
)


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children."""
    user = system = 0.0
    for p in [pid, *children(pid)]:
        u, s = cpu_seconds(p)
        user, system = user + u, system + s
    return user, system


def main() -> int:
    """Start the three servers, measure each ``--rounds`` times, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    args = argparse.Namespace(**vars(p.parse_args()), threads=2, warmup=1, redis_url=None,
                              postgres=None, big_gib=0.01)
    run = Run()
    try:
        inst = prepare(run, args)
        portal = gunicorn(run, "portal", "wsgi:app", inst.env)
        baseline = gunicorn(run, "baseline", "bench.baseline_app:app",
                            dict(inst.env, BENCH_STORAGE_DIR=str(inst.storage),
                                 PORTAL_ANALYTICS_FLUSHER="workers"), ready_path="/")
        python, version = copyparty_python()
        party = copyparty(run, "copyparty-j2", python, copyparty_share(run, inst), 2)
        key = inst.small_key
        targets = {
            "portal signed-in": (portal, f"/files/{inst.ids['bench 64k']}/download",
                                 {"Cookie": login(portal.port)}),
            "bare send_file": (baseline, f"/f/{key}", {}),
            f"copyparty {version} -j2": (party, "/share/small-64k.bin", {}),
        }
        rows = []
        for round_no in range(1, args.rounds + 1):
            for name, (server, path, headers) in targets.items():
                others = [s for s, _, _ in targets.values() if s is not server]
                with frozen(*others):
                    before = tree_cpu(server.proc.pid)
                    result = wrk(args, name, f"http://127.0.0.1:{server.port}{path}", headers,
                                 connections=args.connections)
                    after = tree_cpu(server.proc.pid)
                # wrk() runs a warm-up first: its requests are in the CPU time too.
                requests = result.rps * (args.duration + args.warmup)
                user = (after[0] - before[0]) / requests * 1e6
                system = (after[1] - before[1]) / requests * 1e6
                rows.append((round_no, name, result.rps, user, system))
        print("\n| round | server | req/s | user µs/req | system µs/req | total µs/req |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for round_no, name, rps, user, system in rows:
            print(f"| {round_no} | {name} | {rps:,.0f} | {user:.0f} | {system:.0f} | "
                  f"{user + system:.0f} |")
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
