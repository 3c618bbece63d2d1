"""Tests for portal.download.zipplan: the exact layout of a resumable STORED zip.

Independent oracles: ``zipfile`` (reads every archive, checks every CRC), Info-ZIP ``unzip``
(lists and tests a sparse ZIP64 archive on disk) and zipstream-ng, whose sized mode predicts
the total length for the same members.  zipstream-ng's layout differs from ours in two
documented ways -- it writes a 16-byte data descriptor after each member (it learns the CRC
while streaming; we know it up front and put it in the local header), and it writes no
extended-timestamp field (we write 9 bytes in each local and each central header) -- so for
archives below its ZIP64 thresholds our size is exactly ``len(zipstream) + 2 * members`` and
each member starts ``7 * index`` bytes earlier.  Its ZIP64 decisions are deliberately
conservative (2 GiB limits, a 5 % size estimate), so the ZIP64 layouts are checked with
``zipfile``, ``unzip`` and the raw records instead.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zipfile
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
import zipstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.download import http
from portal.download.zipplan import (
    LAYOUT_VERSION,
    FileSegment,
    ZipMember,
    archive_names,
    iter_range,
    plan_zip,
)
from portal.filenames import clean_filename
from tests.helpers import require_tool

WHEN = datetime(2024, 9, 1, 8, 30, 15, tzinfo=UTC)
U32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def members_for(files: list[tuple[str, bytes]], mtime: datetime = WHEN):
    """ZipMembers for (name, content) pairs and the read() that serves their content."""
    store = {}
    members = []
    for index, (name, data) in enumerate(files):
        key = f"k{index}"
        store[key] = data
        members.append(ZipMember(name=name, size=len(data), crc32=zlib.crc32(data),
                                 mtime=mtime, key=key))

    def read(key, offset, length):
        data = store[key]
        assert offset >= 0 and offset + length <= len(data), (key, offset, length)
        # Several chunks, as a real reader would yield them.
        for at in range(offset, offset + length, 4096):
            yield data[at:min(at + 4096, offset + length)]

    return members, read


def full_bytes(plan, read) -> bytes:
    return b"".join(iter_range(plan, 0, plan.size, read))


def zero_reader(store: dict[str, bytes]):
    """read() that serves real bytes for the keys in ``store`` and zeros for any other key,
    so that members of many GiB cost nothing."""

    def read(key, offset, length):
        if key in store:
            yield store[key][offset:offset + length]
            return
        while length:
            step = min(length, 1 << 20)
            yield bytes(step)
            length -= step

    return read


class PlanFile(io.RawIOBase):
    """A read-only seekable file whose bytes are produced by iter_range on demand, so that
    zipfile can open an archive of many GiB that exists nowhere."""

    def __init__(self, plan, read) -> None:
        super().__init__()
        self.plan, self.read_fn, self.pos = plan, read, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.plan.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        stop = min(self.plan.size, self.pos + len(buffer))
        if stop <= self.pos:
            return 0
        data = b"".join(iter_range(self.plan, self.pos, stop, self.read_fn))
        buffer[:len(data)] = data
        self.pos = stop
        return len(data)


def tail_records(plan, read) -> bytes:
    """The last literal segment: it ends with the central directory and the end records."""
    return b"".join(iter_range(plan, plan.starts[-1], plan.size, read))


def central_directory(plan, read) -> bytes:
    """The central directory, found from the end records as a reader finds it."""
    tail = tail_records(plan, read)
    _, _, _, _, _, size, offset, _ = struct.unpack("<IHHHHIIH", tail[-22:])
    if tail[-42:-38] == b"PK\x06\x07":  # ZIP64 locator -> ZIP64 end record
        locator_offset = struct.unpack("<IIQI", tail[-42:-22])[2]
        record = tail[len(tail) - (plan.size - locator_offset):]
        size, offset = struct.unpack_from("<IQHHIIQQQQ", record)[8:10]
    return b"".join(iter_range(plan, offset, offset + size, read))


def central_entries(plan, read):
    """Parse the central directory by hand:
    [(flags, needed, size32, name bytes, extra, offset32)]."""
    raw = central_directory(plan, read)
    entries, pos = [], 0
    while pos < len(raw):
        (signature, _, needed, flags, _, _, _, _, _, size32, name_len, extra_len, comment_len,
         _, _, _, offset32) = struct.unpack_from("<IHHHHHHIIIHHHHHII", raw, pos)
        assert signature == 0x02014B50
        name = raw[pos + 46:pos + 46 + name_len]
        extra = raw[pos + 46 + name_len:pos + 46 + name_len + extra_len]
        entries.append((flags, needed, size32, name, extra, offset32))
        pos += 46 + name_len + extra_len + comment_len
    return entries


# ---------------------------------------------------------------------------
# Plans that zipfile reads back exactly
# ---------------------------------------------------------------------------


def check_roundtrip(files, plan, read):
    """The archive opens with zipfile, names, bytes and CRCs are right, testzip passes."""
    full = full_bytes(plan, read)
    assert len(full) == plan.size
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == list(plan.names)
        for info, (_, data) in zip(infos, files, strict=True):
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x0800, "UTF-8 flag (bit 11) must be set"
            assert info.file_size == info.compress_size == len(data)
            assert zlib.crc32(data) == info.CRC
            assert archive.read(info) == data
    return full


def test_empty_plan_is_an_empty_archive():
    plan = plan_zip([])
    full = full_bytes(plan, lambda *a: [])
    assert plan.size == 22 and full.startswith(b"PK\x05\x06")
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        assert archive.infolist() == []


def test_zero_byte_members_read_nothing():
    files = [("empty.txt", b""), ("one.txt", b"x"), ("also empty", b"")]
    members, read = members_for(files)
    plan = plan_zip(members)
    assert [s for s in plan.segments if isinstance(s, FileSegment)] == [
        FileSegment("k1", 0, 1)]
    check_roundtrip(files, plan, read)


def test_chinese_names_are_utf8_with_bit_11():
    files = [("2024秋季学期课程表.pdf", os.urandom(3000)), ("成绩单 张三.docx", b"abc"),
             ("plain.txt", b"ascii names carry the flag too")]
    members, read = members_for(files)
    plan = plan_zip(members)
    check_roundtrip(files, plan, read)
    for flags, needed, _size, name, _extra, _offset in central_entries(plan, read):
        assert flags == 0x0800 and needed == 20
        assert name.decode("utf-8") in {n for n, _ in files}
    # the local headers say the same
    full = full_bytes(plan, read)
    for info in zipfile.ZipFile(io.BytesIO(full)).infolist():
        flags, = struct.unpack_from("<H", full, info.header_offset + 6)
        assert flags == 0x0800


def test_duplicate_names_get_numbered_before_the_extension():
    files = [("a.pdf", b"1"), ("A.pdf", b"2"), ("a.pdf", b"3"), ("a (2).pdf", b"4"),
             ("notes", b"5"), ("notes", b"6"), ("课程.pdf", b"7"), ("课程.pdf", b"8")]
    members, read = members_for(files)
    plan = plan_zip(members)
    assert plan.names == ("a.pdf", "A (2).pdf", "a (3).pdf", "a (2) (2).pdf", "notes",
                          "notes (2)", "课程.pdf", "课程 (2).pdf")
    check_roundtrip(files, plan, read)


@pytest.mark.parametrize(("raw", "clean"), [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\作业.doc", "作业.doc"),
    ("\u202egnp.exe", "gnp.exe"),
    ("..", "download"),
    ("", "download"),
    ("a\x00b\x07.txt", "ab.txt"),
    ("a\r\n b.txt", "a b.txt"),
])
def test_names_are_cleaned(raw, clean):
    assert archive_names([raw]) == [clean] == [clean_filename(raw)]


def test_many_files_use_the_zip64_end_records():
    count = 70_000
    files = [(f"f{i}.txt", b"" if i % 2 else b"%d" % i) for i in range(count)]
    members, read = members_for(files)
    plan = plan_zip(members)
    assert plan.zip64
    full = full_bytes(plan, read)
    eocd = struct.unpack("<IHHHHIIH", full[-22:])
    assert eocd[3] == eocd[4] == 0xFFFF  # entry counts: "see the ZIP64 record"
    locator = struct.unpack("<IIQI", full[-42:-22])
    assert locator[0] == 0x07064B50
    record = struct.unpack_from("<IQHHIIQQQQ", full, locator[2])
    assert record[0] == 0x06064B50 and record[6] == record[7] == count
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        infos = archive.infolist()
        assert len(infos) == count
        assert archive.read("f69998.txt") == b"69998"
        assert archive.read(infos[-1]) == b""
    # zipstream-ng predicts the size of the same members (see the module docstring)
    oracle = zipstream.ZipStream(sized=True)
    for name, data in files:
        oracle.add(data, name)
    assert plan.size == len(oracle) + 2 * count


@pytest.mark.parametrize(("count", "zip64"), [(65_534, False), (65_535, True)])
def test_entry_count_boundary(count, zip64):
    # 0xFFFF is the sentinel meaning "look in the ZIP64 record", so it is not a plain count.
    members = [ZipMember(f"{i}", 0, 0, WHEN, "k") for i in range(count)]
    plan = plan_zip(members)
    assert plan.zip64 is zip64
    tail = plan.segments[-1]
    assert (b"PK\x06\x06" in tail[-98:]) is zip64
    assert struct.unpack("<H", tail[-22 + 8:-22 + 10])[0] == min(count, 0xFFFF)


# ---------------------------------------------------------------------------
# zipstream-ng as an oracle
# ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a.txt", "课件.pdf", "b", "Ω ω.bin", "资料"]),
                          st.binary(max_size=300)), max_size=8))
def test_matches_zipstream_ng_for_the_same_members(files):
    members, read = members_for(files)
    plan = plan_zip(members)
    ours = check_roundtrip(files, plan, read)

    oracle = zipstream.ZipStream(sized=True)
    for name, (_, data) in zip(plan.names, files, strict=True):
        oracle.add(data, name)
    size = len(oracle)
    theirs = bytes(oracle)
    assert len(theirs) == size
    assert plan.size == size + 2 * len(files)
    with (zipfile.ZipFile(io.BytesIO(ours)) as mine,
          zipfile.ZipFile(io.BytesIO(theirs)) as other):
        pairs = list(zip(mine.infolist(), other.infolist(), strict=True))
        for index, (a, b) in enumerate(pairs):
            assert (a.filename, a.file_size, a.CRC) == (b.filename, b.file_size, b.CRC)
            assert a.header_offset == b.header_offset - 7 * index
            assert mine.read(a) == other.read(b)


# ---------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------

SLICE_FILES = [("课程表.pdf", os.urandom(10_000)), ("empty", b""), ("b.bin", os.urandom(7_777)),
               ("课程表.pdf", os.urandom(1)), ("c.txt", b"hello" * 999)]
SLICE_MEMBERS, SLICE_READ = members_for(SLICE_FILES)
SLICE_PLAN = plan_zip(SLICE_MEMBERS)
SLICE_FULL = full_bytes(SLICE_PLAN, SLICE_READ)


def test_slice_fixture_is_a_valid_archive():
    check_roundtrip(SLICE_FILES, SLICE_PLAN, SLICE_READ)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_range_equals_the_slice_of_the_full_archive(data):
    size = SLICE_PLAN.size
    start = data.draw(st.integers(0, size))
    stop = data.draw(st.integers(start, size))
    assert b"".join(iter_range(SLICE_PLAN, start, stop, SLICE_READ)) == SLICE_FULL[start:stop]


def test_every_segment_boundary_splits_cleanly():
    edges = sorted({0, SLICE_PLAN.size, *SLICE_PLAN.starts})
    for a in edges:
        for b in edges:
            if a <= b:
                got = b"".join(iter_range(SLICE_PLAN, a, b, SLICE_READ))
                assert got == SLICE_FULL[a:b]
                for d in (-1, 1):  # and one byte either side of every boundary
                    if 0 <= a + d <= b:
                        got = b"".join(iter_range(SLICE_PLAN, a + d, b, SLICE_READ))
                        assert got == SLICE_FULL[a + d:b]


@pytest.mark.parametrize(("start", "stop"), [(-1, 5), (5, 4), (0, SLICE_PLAN.size + 1)])
def test_ranges_outside_the_archive_are_refused(start, stop):
    with pytest.raises(ValueError):
        list(iter_range(SLICE_PLAN, start, stop, SLICE_READ))


def test_a_range_inside_member_k_reads_only_that_slice():
    files = [(f"m{i}.bin", os.urandom(1000)) for i in range(6)]
    members, read = members_for(files)
    plan = plan_zip(members)
    calls = []

    def spy(key, offset, length):
        calls.append((key, offset, length))
        return read(key, offset, length)

    file_starts = {s.key: plan.starts[i] for i, s in enumerate(plan.segments)
                   if isinstance(s, FileSegment)}
    full = full_bytes(plan, read)

    start = file_starts["k3"] + 100
    assert b"".join(iter_range(plan, start, start + 50, spy)) == full[start:start + 50]
    assert calls == [("k3", 100, 50)]

    calls.clear()  # from the middle of member 2 to the middle of member 4
    start, stop = file_starts["k2"] + 900, file_starts["k4"] + 10
    assert b"".join(iter_range(plan, start, stop, spy)) == full[start:stop]
    assert calls == [("k2", 900, 100), ("k3", 0, 1000), ("k4", 0, 10)]

    calls.clear()  # a resume from the last member to the end: nothing before it is read
    start = file_starts["k5"] + 1
    assert b"".join(iter_range(plan, start, plan.size, spy)) == full[start:]
    assert calls == [("k5", 1, 999)]

    calls.clear()  # the central directory alone (what a zip lister fetches first)
    assert b"".join(iter_range(plan, plan.starts[-1], plan.size, spy)) == full[plan.starts[-1]:]
    assert calls == []


def test_iteration_stops_reading_when_the_consumer_stops():
    closed = []

    def read(key, offset, length):
        try:
            yield bytes(length)
        finally:
            closed.append(key)

    members = [ZipMember("a", 10, zlib.crc32(bytes(10)), WHEN, "ka"),
               ZipMember("b", 10, zlib.crc32(bytes(10)), WHEN, "kb")]
    plan = plan_zip(members)
    chunks = iter_range(plan, 0, plan.size, read)
    while next(chunks) != bytes(10):
        pass
    chunks.close()  # the client went away while member "a" was being sent
    assert closed == ["ka"]


@pytest.mark.parametrize("served", [b"123", b"12345"])
def test_a_reader_that_disagrees_with_the_plan_aborts(served):
    members = [ZipMember("a", 4, 0, WHEN, "k")]
    plan = plan_zip(members)
    with pytest.raises(http.RangeReadError):
        list(iter_range(plan, 0, plan.size, lambda *a: [served]))


# ---------------------------------------------------------------------------
# Validators, times, member checks
# ---------------------------------------------------------------------------


def test_etag_is_deterministic_and_tracks_every_byte():
    base = [ZipMember("a.txt", 3, 1, WHEN, "k1"), ZipMember("课.pdf", 5, 2, WHEN, "k2")]
    etag = plan_zip(base).etag
    assert etag == plan_zip(list(base)).etag  # same members: same tag, on any node
    http.Representation(size=1, etag=etag, last_modified=WHEN, content_type="application/zip")
    assert etag.startswith("zip-") and LAYOUT_VERSION == 1
    changed = [
        [base[1], base[0]],  # order
        [ZipMember("b.txt", 3, 1, WHEN, "k1"), base[1]],  # name
        [ZipMember("a.txt", 3, 1, WHEN, "k9"), base[1]],  # content
        [ZipMember("a.txt", 3, 7, WHEN, "k1"), base[1]],  # crc
        [ZipMember("a.txt", 3, 1, WHEN + timedelta(seconds=2), "k1"), base[1]],  # mtime
        base[:1],
    ]
    assert len({etag, *(plan_zip(m).etag for m in changed)}) == len(changed) + 1


def test_times_are_utc_with_an_exact_unix_mtime():
    shanghai = timezone(timedelta(hours=8))
    local = datetime(2024, 9, 1, 16, 30, 15, tzinfo=shanghai)  # == WHEN
    members, read = members_for([("a", b"x")], mtime=local)
    plan = plan_zip(members)
    full = full_bytes(plan, read)
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        info = archive.infolist()[0]
    assert info.date_time == (2024, 9, 1, 8, 30, 14)  # DOS: UTC, two-second steps
    stamp = struct.pack("<HHBI", 0x5455, 5, 1, int(WHEN.timestamp()))
    assert info.extra == stamp  # central directory
    assert plan_zip(members).etag == plan_zip(members_for([("a", b"x")])[0]).etag


def test_times_outside_the_dos_range_are_clamped():
    old = datetime(1970, 1, 1, tzinfo=UTC) - timedelta(days=1)
    members, read = members_for([("old", b"x")], mtime=old)
    full = full_bytes(plan_zip(members), read)
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        info = archive.infolist()[0]
    assert info.date_time == (1980, 1, 1, 0, 0, 0) and info.extra == b""


@pytest.mark.parametrize("kwargs", [
    {"size": -1}, {"size": True}, {"crc32": -1}, {"crc32": 2**32},
    {"mtime": datetime(2024, 1, 1)}, {"key": ""},
])
def test_bad_members_are_refused(kwargs):
    fields = {"name": "a", "size": 1, "crc32": 0, "mtime": WHEN, "key": "k", **kwargs}
    with pytest.raises(ValueError):
        ZipMember(**fields)


# ---------------------------------------------------------------------------
# ZIP64: members and offsets beyond 4 GiB, on an archive that exists nowhere
# ---------------------------------------------------------------------------

GIB = 1 << 30


def huge_plan():
    small_before = b"before the big ones\n"
    small_after = "在 8 GiB 之后\n".encode() * 100
    store = {"before": small_before, "after": small_after}
    members = [
        ZipMember("before.txt", len(small_before), zlib.crc32(small_before), WHEN, "before"),
        ZipMember("lecture-1.mp4", 5 * GIB + 3, 0x12345678, WHEN, "zeros-1"),
        ZipMember("exactly-ffffffff.bin", U32, 0x9ABCDEF0, WHEN, "zeros-2"),
        ZipMember("第二讲 之后.txt", len(small_after), zlib.crc32(small_after), WHEN, "after"),
        ZipMember("empty-at-the-end", 0, 0, WHEN, "nothing"),
    ]
    return plan_zip(members), zero_reader(store), store


def test_zip64_fields_parse_with_zipfile():
    plan, read, store = huge_plan()
    assert plan.zip64 and plan.size > 9 * GIB
    with PlanFile(plan, read) as raw, zipfile.ZipFile(raw) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == list(plan.names)
        sizes = [i.file_size for i in infos]
        assert sizes == [len(store["before"]), 5 * GIB + 3, U32, len(store["after"]), 0]
        assert [i.compress_size for i in infos] == sizes
        assert infos[1].CRC == 0x12345678 and infos[2].CRC == 0x9ABCDEF0
        assert infos[3].header_offset > 2 * U32  # only a ZIP64 field can say where it is
        # reading a member behind 8 GiB goes through the ZIP64 offset and checks its CRC
        assert archive.read("第二讲 之后.txt") == store["after"]
        assert archive.read("before.txt") == store["before"]
        assert archive.read("empty-at-the-end") == b""
        with archive.open("lecture-1.mp4") as member:
            assert member.read(10) == bytes(10)

    entries = central_entries(plan, read)
    stamp = struct.pack("<HHBI", 0x5455, 5, 1, int(WHEN.timestamp()))
    offsets = [i.header_offset for i in infos]
    # before.txt: plain; the big ones: ZIP64 sizes; the ones behind 4 GiB: ZIP64 offset, and
    # their sizes too (Info-ZIP needs that after a member of exactly 0xFFFFFFFF bytes)
    assert [e[1] for e in entries] == [20, 45, 45, 45, 45]
    assert [e[2] for e in entries] == [len(store["before"]), U32, U32, U32, U32]
    assert [e[5] for e in entries] == [0, offsets[1], U32, U32, U32]
    assert offsets[2] > U32
    assert entries[0][4] == stamp
    assert entries[1][4] == struct.pack("<HHQQ", 1, 16, 5 * GIB + 3, 5 * GIB + 3) + stamp
    assert entries[2][4] == struct.pack("<HHQQQ", 1, 24, U32, U32, offsets[2]) + stamp
    size = len(store["after"])
    assert entries[3][4] == struct.pack("<HHQQQ", 1, 24, size, size, offsets[3]) + stamp
    assert entries[4][4] == struct.pack("<HHQQQ", 1, 24, 0, 0, offsets[4]) + stamp

    tail = tail_records(plan, read)
    eocd = struct.unpack("<IHHHHIIH", tail[-22:])
    directory = central_directory(plan, read)
    cd_offset = plan.size - 98 - len(directory)
    assert tail.endswith(directory + tail[-98:])
    assert eocd[5:7] == (len(directory), U32)  # directory size fits, its offset does not
    locator = struct.unpack("<IIQI", tail[-42:-22])
    record = struct.unpack("<IQHHIIQQQQ", tail[-98:-42])
    assert locator[0] == 0x07064B50 and locator[2] == plan.size - 98
    assert record[0] == 0x06064B50 and record[1] == 44
    assert record[6:] == (5, 5, len(directory), cd_offset)


def test_zip64_local_headers_carry_both_sizes():
    plan, _, _ = huge_plan()
    local = plan.segments[2]  # before.txt's data is segment 1; lecture-1's header follows
    assert isinstance(local, bytes) and local.startswith(b"PK\x03\x04")
    needed, _, _, _, _, _, csize, usize, name_len, _ = struct.unpack_from("<HHHHHIIIHH", local, 4)
    assert (needed, csize, usize) == (45, U32, U32)
    extra = local[30 + name_len:]
    assert struct.unpack_from("<HHQQ", extra) == (1, 16, 5 * GIB + 3, 5 * GIB + 3)


def test_a_size_just_below_the_sentinel_needs_no_zip64_field():
    plan = plan_zip([ZipMember("big", U32 - 1, 0, WHEN, "z")])
    _flags, needed, size32, _name, extra, offset32 = central_entries(plan, zero_reader({}))[0]
    assert (needed, size32, offset32) == (20, U32 - 1, 0)
    assert extra == struct.pack("<HHBI", 0x5455, 5, 1, int(WHEN.timestamp()))
    assert plan.segments[0][18:26] == struct.pack("<II", U32 - 1, U32 - 1)
    assert plan.zip64  # only because the central directory itself starts beyond 4 GiB


def test_an_offset_exactly_at_the_sentinel_uses_zip64():
    # first local header: 30 + len("a") + 9 (timestamp) bytes, then the data
    first = U32 - 40
    plan = plan_zip([ZipMember("a", first, 0, WHEN, "z1"), ZipMember("b", 1, 0, WHEN, "z2")])
    read = zero_reader({})
    entries = central_entries(plan, read)
    assert entries[0][5] == 0 and entries[1][5] == U32
    assert struct.unpack("<HHQQQ", entries[1][4][:28]) == (1, 24, 1, 1, U32)
    with PlanFile(plan, read) as raw, zipfile.ZipFile(raw) as archive:
        assert archive.infolist()[1].header_offset == U32


def test_info_zip_lists_and_tests_a_sparse_zip64_archive(tmp_path):
    unzip = require_tool("unzip")
    plan, _, store = huge_plan()
    path = tmp_path / "huge.zip"
    with open(path, "wb") as out:  # literal and small members written; zeros left as holes
        for segment, start in zip(plan.segments, plan.starts, strict=True):
            if isinstance(segment, bytes):
                out.seek(start)
                out.write(segment)
            elif segment.key in store:
                out.seek(start)
                out.write(store[segment.key])
        out.truncate(plan.size)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    listing = subprocess.run([unzip, "-l", str(path)], capture_output=True, text=True,
                             env=env, check=False)
    assert listing.returncode == 0, listing.stderr
    assert f"{5 * GIB + 3}" in listing.stdout and f"{U32}" in listing.stdout
    assert "5 files" in listing.stdout
    tested = subprocess.run([unzip, "-t", str(path), "before.txt", "第二讲 之后.txt",
                             "empty-at-the-end"], capture_output=True, text=True, env=env,
                            check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout
