"""Many slow downloads at once, for bench/run_download_bench.py.

Opens N connections to one URL path and reads each one at about RATE bytes per second
(small receive buffers, so the server really has to wait for the client), until DURATION
seconds after start. Prints one JSON line with what happened: how many connected, how many
got a response, the status codes, the bytes read and the mean rate per served client.

    python bench/slow_clients.py --port 8000 --path /files/3/download --cookie 'session=...'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import time
from collections import Counter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--cookie", default="")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=int, default=20_000, help="bytes per second per client")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between reads")
    p.add_argument("--duration", type=float, default=35.0, help="seconds, then every client stops")
    p.add_argument("--ramp", type=float, default=2.0, help="seconds over which clients connect")
    p.add_argument("--rcvbuf", type=int, default=16384)
    return p.parse_args(argv)


class Stats:
    """Counters shared by all clients (one event loop, so no locking)."""

    def __init__(self) -> None:
        self.connected = 0
        self.served = 0
        self.errors = 0
        self.bytes = 0
        self.status: Counter[str] = Counter()
        self.served_seconds = 0.0
        self.error_kinds: Counter[str] = Counter()


async def one_client(i: int, args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """Connect, ask for the file, then read about rate*interval bytes every interval."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(args.ramp * i / max(1, args.clients))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.setblocking(False)
    got = 0
    first_byte_at = None
    chunk = max(1, int(args.rate * args.interval))
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (args.host, args.port)),
                               timeout=max(0.01, deadline - time.monotonic()))
        stats.connected += 1
        request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                   f"User-Agent: portal-bench-slow\r\n"
                   + (f"Cookie: {args.cookie}\r\n" if args.cookie else "") + "\r\n")
        await loop.sock_sendall(sock, request.encode())
        while True:
            started = time.monotonic()
            if started >= deadline:
                break
            data = await asyncio.wait_for(loop.sock_recv(sock, chunk), timeout=deadline - started)
            if not data:
                break
            if first_byte_at is None:
                first_byte_at = time.monotonic()
                stats.served += 1
                line = data.split(b"\r\n", 1)[0].split()
                stats.status[line[1].decode() if len(line) > 1 else "?"] += 1
            got += len(data)
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except TimeoutError:
        pass  # the deadline came while waiting: not (or no longer) served
    except OSError as exc:
        stats.errors += 1
        stats.error_kinds[type(exc).__name__] += 1
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        stats.bytes += got
        if first_byte_at is not None:
            stats.served_seconds += max(0.001, min(time.monotonic(), deadline) - first_byte_at)


async def run(args: argparse.Namespace) -> dict:
    """Run every client to the deadline and summarise."""
    stats = Stats()
    deadline = time.monotonic() + args.duration
    await asyncio.gather(*(one_client(i, args, stats, deadline) for i in range(args.clients)))
    rate = stats.bytes / stats.served_seconds if stats.served_seconds else 0.0
    return {
        "clients": args.clients, "connected": stats.connected, "served": stats.served,
        "status": dict(stats.status), "errors": stats.errors,
        "error_kinds": dict(stats.error_kinds), "bytes": stats.bytes,
        "mean_rate_per_served_client": round(rate),
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point: raise the descriptor limit, run, print the JSON summary."""
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.clients + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
