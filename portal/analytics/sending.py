"""What every node is sending right now: the admin overview's "downloading now".

Only a node can read its own workers' journals (``journal.live_open_starts``: a start without
an end is a response being sent). So each node's flusher publishes a summary of them to Redis
every ``PUBLISH_SECONDS``, under a key that expires after ``EXPIRE_SECONDS``, and the overview
on any node adds up every node's summary, its own read live from its journals instead. A node
that stops drops out when its summary expires; a summary is at most ``EXPIRE_SECONDS`` old.
With Redis down the overview shows its own node and says so (``Sending.complete`` False):
the count is never made up.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from .clients import who_key
from .eventrows import load_row
from .journal import live_open_starts
from .keys import AnalyticsKeys

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 5.0
EXPIRE_SECONDS = 20


def node_of(journal_dir: Path) -> str:
    """This node's name: its host and journal folder (two nodes may share a host)."""
    return f"{socket.gethostname()}:{journal_dir.resolve()}"


def responses(journal_dir: Path) -> list[tuple[int, str]]:
    """(file id, person) of each file body this node is sending now: GET answered 200 or 206,
    not a 304 or a HEAD. The person is whom analytics counts the download for
    (``clients.who_key``: the user, else the signed link, else a hash of the client)."""
    found = []
    for record in live_open_starts(journal_dir):
        row = load_row(record)
        if (row.get("method") == "GET" and row.get("status") in (200, 206)
                and isinstance(row.get("file_id"), int)):
            found.append((row["file_id"], who_key(
                row.get("user_id"), row.get("link_id"), row.get("client_ip") or "",
                row.get("user_agent") or "")))
    return found


def publish(client: redis.Redis, keys: AnalyticsKeys, journal_dir: Path) -> None:
    """Put this node's summary in Redis (raises RedisError when Redis is down)."""
    node = node_of(journal_dir)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.sending(node), json.dumps(responses(journal_dir)), ex=EXPIRE_SECONDS)
    pipe.zadd(keys.sending_nodes, {node: now})
    pipe.zremrangebyscore(keys.sending_nodes, "-inf", now - EXPIRE_SECONDS)
    pipe.execute()


@dataclass(frozen=True)
class Sending:
    """Every node's responses being sent, and whether every node could be read."""

    rows: list[tuple[int, str]]
    nodes: int
    complete: bool


def gather(client: redis.Redis, keys: AnalyticsKeys | None, journal_dir: Path) -> Sending:
    """This node's responses read live, and the other nodes' last summaries."""
    rows = responses(journal_dir)
    if keys is None:
        return Sending(rows, 1, False)
    here = node_of(journal_dir)
    try:
        nodes = [n.decode() if isinstance(n, bytes) else n for n in client.zrangebyscore(
            keys.sending_nodes, time.time() - EXPIRE_SECONDS, "+inf")]
        others = [n for n in nodes if n != here]
        summaries = client.mget([keys.sending(n) for n in others]) if others else []
    except redis.RedisError:
        return Sending(rows, 1, False)
    count = 1
    for summary in summaries:
        if summary is None:  # expired between the two reads: that node is gone
            continue
        try:
            rows.extend((int(f), str(p)) for f, p in json.loads(summary))
        except (ValueError, TypeError):
            log.warning("a node's sending summary is not readable; skipped")
            continue
        count += 1
    return Sending(rows, count, True)
