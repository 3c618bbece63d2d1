"""The exact byte layout of a STORED (uncompressed) zip of stored files, planned before sending.

A zip of stored files whose sizes and CRC-32 values are known in advance (the portal keeps
each version's CRC-32 from upload time) has a length and content that are fixed before the
first byte is sent.  :func:`plan_zip` computes that layout as a list of segments -- literal
bytes for the headers and the central directory, and slices of stored files -- so that
:func:`iter_range` can produce any byte range of the archive while reading only the parts of
the members that the range overlaps.  That is what makes a zip download resumable with HTTP
Range (``curl -C -``, download managers) without building the archive on disk or in memory.

zipstream-ng (``zipstream.ZipStream(sized=True)``), the library the ecosystem relies on for
streamed zips, computes the same total size, but it can only produce the archive from its
first byte: it learns each CRC while streaming and writes it in a data descriptor after the
member.  Serving from an offset needs the layout itself, so it is computed here by hand
(APPNOTE.TXT 6.3.10); the tests use zipstream-ng, ``zipfile`` and Info-ZIP ``unzip`` as
independent checks.

Layout decisions (all deterministic, so every node produces the same bytes and ETag):

* No data descriptors: CRC-32 and sizes are in the local headers, which also suits readers
  that cannot handle a STORED entry with a descriptor (Java's ZipInputStream).
* Every name is UTF-8 with general purpose bit 11 set, cleaned by
  :func:`clean_filename` and made unique (case-insensitively, because Windows and macOS
  extract to case-insensitive file systems) by adding `` (2)``, `` (3)`` ... before the
  extension.
* The MS-DOS time is written in UTC (the server's local time zone must not change the bytes),
  and an extended-timestamp field (0x5455) carries the exact Unix mtime, which Info-ZIP,
  7-Zip and libarchive use to restore the right local time.
* ZIP64 (APPNOTE 4.5.3, 4.3.14-4.3.15) exactly where a 32-bit field cannot hold the value:
  sizes and offsets >= 0xFFFFFFFF, and 0xFFFF or more entries (0xFFFF / 0xFFFFFFFF are the
  "look in the ZIP64 record" sentinels, so they cannot be used as plain values either); a
  central ZIP64 field always carries both sizes (see ``_central_header`` for why).
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from ..filenames import clean_filename, split_extension
from . import http

__all__ = [
    "LAYOUT_VERSION",
    "FileSegment",
    "ZipMember",
    "ZipPlan",
    "archive_names",
    "iter_range",
    "plan_zip",
]

#: Part of every ETag: bump it whenever the bytes produced for the same members change
#: (the ETag also hashes every literal byte, so this is a second, explicit guard).
LAYOUT_VERSION = 1

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_EOCD_SIG = 0x06054B50
_EOCD64_SIG = 0x06064B50
_EOCD64_LOCATOR_SIG = 0x07064B50

_FLAG_UTF8 = 0x0800  # general purpose bit 11: name and comment are UTF-8
_STORED = 0
_VERSION_DEFAULT = 20  # 2.0: what stored entries have been written with since PKZIP 2
_VERSION_ZIP64 = 45  # 4.5: ZIP64 extensions
_MADE_BY = (3 << 8) | _VERSION_ZIP64  # Unix host, so external attributes are a file mode
_EXTERNAL_ATTR = (0o100644 << 16)  # regular file, rw-r--r--

_EXTRA_ZIP64 = 0x0001
_EXTRA_TIMESTAMP = 0x5455  # "UT": extended timestamp, Unix mtime (Info-ZIP)

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_EOCD64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes

_DOS_MIN = datetime(1980, 1, 1, tzinfo=UTC)
_DOS_MAX = datetime(2107, 12, 31, 23, 59, 58, tzinfo=UTC)


@dataclass(frozen=True)
class ZipMember:
    """One file to put in the archive.

    ``name`` is the wanted name (it is cleaned and made unique by :func:`plan_zip`);
    ``size`` and ``crc32`` describe the stored bytes exactly; ``mtime`` is timezone-aware;
    ``key`` is handed back to the ``read`` function of :func:`iter_range`.  The key must
    identify the content (the portal passes the SHA-256 storage key), because the plan's
    ETag is derived from it.
    """

    name: str
    size: int
    crc32: int
    mtime: datetime
    key: str

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size must be a non-negative int, got {self.size!r}")
        if (isinstance(self.crc32, bool) or not isinstance(self.crc32, int)
                or not 0 <= self.crc32 <= _U32_MAX):
            raise ValueError(f"crc32 must be an unsigned 32-bit int, got {self.crc32!r}")
        if not isinstance(self.mtime, datetime) or self.mtime.utcoffset() is None:
            raise ValueError("mtime must be a timezone-aware datetime")
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("key must be a non-empty string")


class FileSegment(NamedTuple):
    """``length`` bytes of the stored content ``key``, from ``offset``."""

    key: str
    offset: int
    length: int


@dataclass(frozen=True)
class ZipPlan:
    """The complete layout of one archive.

    ``segments`` are ``bytes`` (headers, central directory, end records) or
    :class:`FileSegment`; ``starts[i]`` is the archive offset of ``segments[i]``, and
    ``size`` the total length.  ``names`` are the final member names, in order.  ``etag`` is
    an opaque-tag (no quotes) usable as a strong validator: it changes whenever a byte of
    the archive would change.
    """

    size: int
    etag: str
    names: tuple[str, ...]
    segments: tuple[bytes | FileSegment, ...]
    starts: tuple[int, ...]
    zip64: bool


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def archive_names(names: Iterable[str]) -> list[str]:
    """Clean every name (:func:`clean_filename`) and make it unique in the archive.

    A name already taken (compared case-insensitively) gets `` (2)``, `` (3)``, ... before
    its extension: ``a.pdf``, ``A.pdf``, ``a.pdf`` become ``a.pdf``, ``A (2).pdf``,
    ``a (3).pdf``.
    """
    taken: set[str] = set()
    result = []
    for raw in names:
        name = clean_filename(raw)
        if name.casefold() in taken:
            stem, ext = split_extension(name)
            number = 2
            while f"{stem} ({number}){ext}".casefold() in taken:
                number += 1
            name = f"{stem} ({number}){ext}"
        taken.add(name.casefold())
        result.append(name)
    return result


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


def _dos_datetime(mtime: datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS format, in UTC, clamped to the years DOS dates can hold."""
    moment = min(max(mtime.astimezone(UTC), _DOS_MIN), _DOS_MAX)
    dos_time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    dos_date = ((moment.year - 1980) << 9) | (moment.month << 5) | moment.day
    return dos_time, dos_date


def _timestamp_extra(mtime: datetime) -> bytes:
    """The extended-timestamp field with the mtime only (identical in local and central
    headers), or nothing for a time its 32-bit field cannot hold unambiguously."""
    seconds = int(mtime.timestamp())
    if not 0 <= seconds < 2**31:
        return b""
    return struct.pack("<HHBI", _EXTRA_TIMESTAMP, 5, 1, seconds)


def _local_header(name: bytes, member: ZipMember, dos: tuple[int, int], stamp: bytes) -> bytes:
    big = member.size >= _U32_MAX
    extra = stamp
    if big:  # APPNOTE 4.5.3: the local ZIP64 field holds both sizes, and only them
        extra = struct.pack("<HHQQ", _EXTRA_ZIP64, 16, member.size, member.size) + extra
    size32 = _U32_MAX if big else member.size
    header = _LOCAL_HEADER.pack(
        _LOCAL_SIG, _VERSION_ZIP64 if big else _VERSION_DEFAULT, _FLAG_UTF8, _STORED,
        dos[0], dos[1], member.crc32, size32, size32, len(name), len(extra))
    return header + name + extra


def _central_header(name: bytes, member: ZipMember, dos: tuple[int, int], stamp: bytes,
                    offset: int) -> bytes:
    # APPNOTE 4.5.3: the central ZIP64 field holds, in this order, only the values whose
    # 32-bit field is set to 0xFFFFFFFF.  Whenever the field is needed at all, both sizes go
    # in it (their 32-bit fields set to the sentinel, which the spec allows): Info-ZIP unzip
    # 6.0 decides whether to read a size from it by looking at the *previous* entry's local
    # size as well, so after a member of exactly 0xFFFFFFFF bytes it would read the offset
    # of an offset-only field as a size ("extra field (type: 0x0001) corrupt").
    wide = []
    if member.size >= _U32_MAX or offset >= _U32_MAX:
        wide += [member.size, member.size]  # uncompressed, compressed
    if offset >= _U32_MAX:
        wide.append(offset)
    extra = stamp
    if wide:
        extra = struct.pack(f"<HH{len(wide)}Q", _EXTRA_ZIP64, 8 * len(wide), *wide) + extra
    size32 = _U32_MAX if wide else member.size
    header = _CENTRAL_HEADER.pack(
        _CENTRAL_SIG, _MADE_BY, _VERSION_ZIP64 if wide else _VERSION_DEFAULT, _FLAG_UTF8,
        _STORED, dos[0], dos[1], member.crc32, size32, size32, len(name), len(extra),
        0, 0, 0, _EXTERNAL_ATTR, min(offset, _U32_MAX))
    return header + name + extra


def _end_records(count: int, cd_offset: int, cd_size: int) -> tuple[bytes, bool]:
    """The end of central directory record, preceded by the ZIP64 end record and its
    locator when a count, size or offset does not fit (returns the bytes, zip64)."""
    zip64 = count >= _U16_MAX or cd_offset >= _U32_MAX or cd_size >= _U32_MAX
    out = b""
    if zip64:
        eocd64_offset = cd_offset + cd_size
        out += _EOCD64.pack(_EOCD64_SIG, _EOCD64.size - 12, _MADE_BY, _VERSION_ZIP64, 0, 0,
                            count, count, cd_size, cd_offset)
        out += _EOCD64_LOCATOR.pack(_EOCD64_LOCATOR_SIG, 0, eocd64_offset, 1)
    out += _EOCD.pack(_EOCD_SIG, 0, 0, min(count, _U16_MAX), min(count, _U16_MAX),
                      min(cd_size, _U32_MAX), min(cd_offset, _U32_MAX), 0)
    return out, zip64


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------


def plan_zip(members: Sequence[ZipMember]) -> ZipPlan:
    """Lay out a STORED zip of ``members``, in order, without reading any content."""
    names = archive_names(m.name for m in members)
    segments: list[bytes | FileSegment] = []
    starts: list[int] = []
    central: list[bytes] = []
    pending: list[bytes] = []  # literal bytes not yet emitted: adjacent ones form one segment
    pending_size = position = 0
    any_zip64 = False

    def emit(segment: bytes | FileSegment, length: int) -> None:
        nonlocal position
        segments.append(segment)
        starts.append(position)
        position += length

    def flush() -> None:
        nonlocal pending_size
        emit(b"".join(pending), pending_size)
        pending.clear()
        pending_size = 0

    for member, name in zip(members, names, strict=True):
        encoded = name.encode("utf-8")
        if len(encoded) > _U16_MAX:  # cannot happen after clean_filename; kept as a guard
            raise ValueError("name too long for a zip entry")
        dos, stamp = _dos_datetime(member.mtime), _timestamp_extra(member.mtime)
        offset = position + pending_size
        any_zip64 |= member.size >= _U32_MAX or offset >= _U32_MAX
        header = _local_header(encoded, member, dos, stamp)
        pending.append(header)
        pending_size += len(header)
        central.append(_central_header(encoded, member, dos, stamp, offset))
        if member.size:
            flush()
            emit(FileSegment(member.key, 0, member.size), member.size)

    cd_offset = position + pending_size
    directory = b"".join(central)
    end, end_zip64 = _end_records(len(members), cd_offset, len(directory))
    pending += [directory, end]
    pending_size += len(directory) + len(end)
    flush()
    return ZipPlan(size=position, etag=_etag(segments), names=tuple(names),
                   segments=tuple(segments), starts=tuple(starts),
                   zip64=any_zip64 or end_zip64)


def _etag(segments: Sequence[bytes | FileSegment]) -> str:
    """A strong validator: a hash of the layout version, every literal byte (names, sizes,
    CRCs, times, offsets) and the key of every file slice (a key names its content), so the
    same selection gives the same tag on every node and any change of a byte changes it."""
    digest = hashlib.sha256(f"portal-zip-layout-{LAYOUT_VERSION}\n".encode("ascii"))
    for segment in segments:
        if isinstance(segment, bytes):
            digest.update(b"L%d\n" % len(segment))
            digest.update(segment)
        else:
            key = segment.key.encode("utf-8")
            digest.update(b"F%d:%d:%d\n" % (len(key), segment.offset, segment.length))
            digest.update(key)
    return f"zip-{digest.hexdigest()}"


# ---------------------------------------------------------------------------
# Reading a range
# ---------------------------------------------------------------------------

Reader = Callable[[str, int, int], Iterable[bytes]]


def member_ranges(plan: ZipPlan,
                  spans: Iterable[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """For each member with content (size > 0), in order, the ranges of its content that
    the archive ranges ``spans`` carry (member offsets): what a zip download delivered of
    each file, for analytics."""
    spans = list(spans)
    out: list[list[tuple[int, int]]] = []
    for segment, seg_start in zip(plan.segments, plan.starts, strict=True):
        if isinstance(segment, bytes):
            continue
        ranges = []
        for a, b in spans:
            lo, hi = max(a, seg_start), min(b, seg_start + segment.length)
            if lo < hi:
                ranges.append((segment.offset + lo - seg_start, segment.offset + hi - seg_start))
        out.append(ranges)
    return out


def iter_range(plan: ZipPlan, start: int, stop: int, read: Reader) -> Iterator[bytes]:
    """Yield exactly the archive bytes ``[start, stop)``.

    Only the segments that overlap the range are visited, and for a file segment only the
    overlapping slice is asked for: ``read(key, offset, length)`` must yield exactly
    ``length`` bytes of the content ``key`` from ``offset``, else :class:`http.RangeReadError`
    is raised (a short or long member would silently corrupt every later byte).
    """
    if not 0 <= start <= stop <= plan.size:
        raise ValueError(f"range [{start}, {stop}) is outside the archive of {plan.size} bytes")
    index = max(0, bisect_right(plan.starts, start) - 1)
    while start < stop and index < len(plan.segments):
        segment, seg_start = plan.segments[index], plan.starts[index]
        length = len(segment) if isinstance(segment, bytes) else segment.length
        lo, hi = start - seg_start, min(stop - seg_start, length)
        if lo < hi:
            if isinstance(segment, bytes):
                yield segment[lo:hi]
            else:
                yield from _read_exactly(read, segment.key, segment.offset + lo, hi - lo)
            start = seg_start + hi
        index += 1


def _read_exactly(read: Reader, key: str, offset: int, length: int) -> Iterator[bytes]:
    chunks = read(key, offset, length)
    received = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            received += len(chunk)
            if received > length:
                raise http.RangeReadError(f"read({key!r}, {offset}, {length}) gave too many bytes")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # release the file now, also when the client goes away
            close()
    if received != length:
        raise http.RangeReadError(
            f"read({key!r}, {offset}, {length}) gave {received} of {length} bytes")
