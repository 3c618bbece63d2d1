"""Start records of open responses, in one append-only file per worker on local disk.

A download's start must be stored before its body goes out, so that a worker killed
mid-download still leaves a trace of the response (recorder.py, step 4). Stored in Redis
that cost a network round trip per download, about a fifth of a warm download's time
(py-spy, bench/run_download_bench.py). Here it is one write(2) to a file opened with
O_APPEND: once write returns, the line is in the kernel's page cache and outlives the
process (a machine crash is another matter, as it is for Redis without fsync).

Format, one record per line: ``S<json of the start record>`` when a response starts,
``E<event key> <event key> ...`` once the ends of those responses are safely buffered
elsewhere (the Redis stream or SQL).

Ownership: the worker holds ``flock(LOCK_EX)`` on its journal for as long as it lives; the
kernel releases the lock when the process dies, however it dies. Any process that can take
the lock on somebody else's journal therefore knows its writer is gone: ``dead_journals``
finds such journals and the starts in them that have no end (the orphans); the caller
stores them and then calls ``Orphans.remove``. A journal grows to a few MB before the
recorder replaces it with one holding only the starts still open (``Recorder._rotate``).

Why by hand: what is needed is a write-ahead log of a few hundred bytes per response with
crash detection by lock; the standard library's os.write, fcntl.flock and json are all
of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".journal"


class Journal:
    """This process's journal file, locked for as long as it is open."""

    def __init__(self, directory: Path, name: str) -> None:
        self.fd = -1
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}{SUFFIX}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise

    def started(self, record: str) -> None:
        """Append one start record (JSON text); raises OSError when the disk refuses."""
        os.write(self.fd, f"S{record}\n".encode())

    def ended(self, keys: Iterable[str]) -> None:
        """Append that these responses' ends are stored elsewhere."""
        keys = list(keys)
        if keys:
            os.write(self.fd, ("E" + " ".join(keys) + "\n").encode())

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def __del__(self) -> None:
        self.close(remove=False)

    def close(self, *, remove: bool) -> None:
        """Close (and delete) the file; the lock goes with the descriptor."""
        if self.fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def parse(text: str) -> dict[str, str]:
    """Event key -> start record (JSON text) of every start without an end.

    A line cut short by a crash is skipped: it is the last one, written by a process that
    died inside write(2), and its response never started sending.
    """
    opened: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("S"):
            try:
                key = json.loads(line[1:])["event_key"]
            except (ValueError, KeyError, TypeError):
                log.warning("analytics journal: unreadable start record skipped")
                continue
            opened[key] = line[1:]
        elif line.startswith("E"):
            for key in line[1:].split():
                opened.pop(key, None)
    return opened


class Orphans:
    """A dead writer's journal, locked by us, and the starts it left without an end."""

    def __init__(self, path: Path, fd: int, records: list[str]) -> None:
        self.path = path
        self.fd = fd
        self.records = records

    def remove(self) -> None:
        """Delete the journal (its orphans are stored) and release it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)

    def release(self) -> None:
        """Keep the journal for a later attempt (storing failed)."""
        os.close(self.fd)


def _journals(directory: Path) -> Iterator[tuple[Path, int]]:
    """Each journal file of ``directory`` opened for reading (the caller closes the fd)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            yield path, os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # recovered by another process meanwhile


def dead_journals(directory: Path) -> list[Orphans]:
    """The journals in ``directory`` whose writers are gone, each locked by this process.

    A journal this process holds itself cannot be locked again here (flock locks belong to
    the open file description), so it is never mistaken for a dead one.
    """
    found = []
    for path, fd in _journals(directory):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its writer lives
        try:
            if os.fstat(fd).st_nlink == 0:  # unlinked by the process that recovered it first
                os.close(fd)
                continue
            with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as fh:
                records = list(parse(fh.read()).values())
        except OSError:
            os.close(fd)
            log.exception("analytics journal %s could not be read", path)
            continue
        found.append(Orphans(path, fd, records))
    return found


def live_open_starts(directory: Path) -> list[str]:
    """The start records without an end in the journals of living writers on this node:
    the responses being sent right now (the admin overview's "downloading now")."""
    return _open_starts(directory, live=True)


def dead_open_starts(directory: Path) -> list[str]:
    """The start records without an end in the journals of writers that are gone: the
    orphans the next flush will record (/metrics shows how many wait, and since when)."""
    return _open_starts(directory, live=False)


def _open_starts(directory: Path, *, live: bool) -> list[str]:
    """The starts without an end of the living writers' journals, or of the dead ones'.

    A writer holds its journal's exclusive lock while it lives, so a shared lock that is
    refused means a live journal; one that is granted means a dead writer's (its orphans
    are the flusher's), released at once. A flusher recovering a dead journal holds it
    exclusively too: it counts as live meanwhile.
    """
    found: list[str] = []
    for path, fd in _journals(directory):
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                dead = False
            else:
                dead = True
            if dead != live and os.fstat(fd).st_nlink:
                with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as fh:
                    found.extend(parse(fh.read()).values())
            if dead:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            log.exception("analytics journal %s could not be read", path)
        finally:
            os.close(fd)
    return found
