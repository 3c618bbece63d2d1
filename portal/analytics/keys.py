"""The analytics recorder's Redis keys, in one database's namespace (portal/cache/keys.py).
"""

from __future__ import annotations

from dataclasses import dataclass

#: How long the flush lock is held without being renewed (a flusher that died lets go).
FLUSH_LOCK_MS = 60_000


@dataclass(frozen=True)
class AnalyticsKeys:
    """The recorder's keys in one database's namespace."""

    #: Finished responses waiting for the flusher (one JSON entry each, XADD / XRANGE / XDEL).
    stream: str
    #: Held (SET NX PX) by the one process that flushes at a time.
    flush_lock: str
    #: x-accel downloads waiting for nginx's log line (ANALYTICS_NGINX_LOG): event key -> JSON.
    nginx_waiting: str
    #: What nginx's log said about an event, until joined to it: event key -> JSON.
    nginx_sent: str

    @property
    def sending_nodes(self) -> str:
        """The nodes that published what they send now (analytics/sending.py): node -> time."""
        return f"{self.stream.rsplit(':', 1)[0]}:sending:nodes"

    def sending(self, node: str) -> str:
        """One node's summary of the responses it is sending now (JSON, expiring)."""
        return f"{self.stream.rsplit(':', 1)[0]}:sending:node:{node}"

    def nginx_state(self, host: str, path: str) -> str:
        """How far one nginx host's event log has been read: {"inode", "offset"} (each node
        with its own nginx reads its own file)."""
        return f"{self.stream.rsplit(':', 1)[0]}:nginx:state:{host}:{path}"


def analytics_keys(prefix: str) -> AnalyticsKeys:
    """The recorder's keys under this database's prefix (namespace())."""
    base = f"{prefix}analytics"
    return AnalyticsKeys(stream=f"{base}:events", flush_lock=f"{base}:flush-lock",
                         nginx_waiting=f"{base}:nginx:waiting", nginx_sent=f"{base}:nginx:sent")
