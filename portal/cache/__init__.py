"""Every Redis key, TTL and invalidation of the portal lives in this package.

Redis is an optimisation: every function here degrades to "no cache" when Redis is down, so
the portal is slower then, never wrong and never failing; and no cached fact about a right
outlives its revocation, because each is judged against the database's change log when it is
used (portal/coherence.py, docs/trust.md).

- ``connection``: the client (short timeouts, a circuit breaker) and the cache's counters;
- ``keys``: every key of a database's facts, under that database's namespace;
- ``prefetch``: one round trip (or none) for what a download reads;
- ``metadata``, ``users``: the download metadata and the user loader's snapshots;
- ``changes``: committed changes into the change log, then out of Redis and the copies;
- ``local``: the workers' own copies, kept coherent by pub/sub;
- ``hot``: the hot-file cache of remote origins, in Redis and in each worker's memory.
"""

from ..coherence import generation_key
from .changes import forget_locally, watch_file_changes
from .connection import STATS_FIELDS, STATS_KEY, Outage, client, make_client, stats, status
from .hot import (
    HOT_CHUNK,
    HOT_LRU_KEY,
    HOT_SIZES_KEY,
    HotMemory,
    RangeReader,
    hot_fill,
    hot_lookup,
    hot_memory,
    hot_read,
    hot_whole,
    range_reader,
)
from .keys import (
    meta_key,
    namespace,
    subject_keys,
    user_key,
    user_keys,
    version_key_by_id,
    version_key_by_number,
)
from .local import LocalCopies, local_copies
from .metadata import (
    MISSING,
    FileSnapshot,
    VersionSnapshot,
    decode_meta,
    decode_version,
    file_meta,
    meta_from_reply,
    remember_public,
    snapshot,
    version_snapshot,
    version_snapshot_of,
)
from .prefetch import prefetch_download, read_keys
from .users import decode_user, user_from_reply, user_snapshot

__all__ = [
    "HOT_CHUNK", "HOT_LRU_KEY", "HOT_SIZES_KEY", "MISSING", "STATS_FIELDS", "STATS_KEY",
    "FileSnapshot", "HotMemory", "LocalCopies", "Outage", "RangeReader", "VersionSnapshot",
    "client",
    "decode_meta", "decode_user", "decode_version", "file_meta", "forget_locally",
    "generation_key", "hot_fill", "hot_lookup", "hot_memory", "hot_read", "hot_whole",
    "local_copies", "make_client",
    "meta_from_reply", "meta_key", "namespace", "prefetch_download", "range_reader",
    "read_keys", "remember_public", "snapshot", "stats", "status", "subject_keys",
    "user_from_reply", "user_key", "user_keys", "user_snapshot", "version_key_by_id",
    "version_key_by_number", "version_snapshot", "version_snapshot_of", "watch_file_changes",
]
