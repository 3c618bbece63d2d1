"""What reading one request head costs the lean cycle, beside gunicorn's own parse of it.

    .venv/bin/python bench/run_head_parse.py [--number 200000]

The lean cycle (portal/worker.py) parses a warm download's head with gunicorn_h1c, the C
parser gunicorn itself uses, and builds its small environ from the result. This times that
(``_read_head`` on bytes already read, then ``_environ``) against gunicorn's ``Request`` on the
same bytes (its parse, header policy and body reader), in one process and one run, for a
signed-in download head as wrk sends it. Prints a Markdown table; docs/performance.md keeps
the results.
"""

from __future__ import annotations

import argparse
import sys
import timeit

from gunicorn.config import Config
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from portal import worker

HEAD = (b"GET /files/12/download HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n"
        b"Cookie: session=" + b"x" * 180 + b"\r\nRange: bytes=0-65535\r\n\r\n")
ADDR = ("127.0.0.1", 40000)


def lean_reader(cfg: Config):
    """A callable that reads HEAD as the lean cycle does, without a socket or an app."""
    lean = object.__new__(worker.GeventWorker)
    lean.cfg, lean.lean_key = cfg, "portal.lean"
    lean.secure_headers, lean._trust = dict(cfg.secure_scheme_headers), ("", False)
    parse = worker.head_parser(cfg)

    def read() -> dict:
        _, head, _ = worker._read_head(None, HEAD, 5, parse)
        return lean._environ(head, None, ADDR, ("127.0.0.1", 8000))

    return read


def gunicorn_reader(cfg: Config):
    """A callable that parses HEAD with gunicorn's Request (its fast parser when installed)."""

    def read() -> Request:
        return Request(cfg, IterUnreader([HEAD]), ADDR)

    return read


def main() -> int:
    """Time both readers and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=200_000)
    args = p.parse_args()
    cfg = Config()
    readers = {"lean cycle: h1c parse + small environ": lean_reader(cfg),
               "gunicorn: Request (h1c parse, header policy, body reader)": gunicorn_reader(cfg)}
    assert readers["lean cycle: h1c parse + small environ"]()["HTTP_RANGE"] == "bytes=0-65535"
    print("| reader | µs per head |\n| --- | ---: |")
    for name, read in readers.items():
        best = min(timeit.repeat(read, number=args.number, repeat=3)) / args.number
        print(f"| {name} | {best * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
