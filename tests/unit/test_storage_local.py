"""Local storage: content addressing, de-duplication, atomic writes, refusals."""

import hashlib
import io
import zlib

import pytest

from portal.storage import StorageError, storage_from_url
from portal.storage.local import LocalStorage


def test_put_stores_by_sha256_once(tmp_path):
    storage = LocalStorage(tmp_path)
    data = "课程表 2026".encode() * 1000
    first = storage.put(io.BytesIO(data))
    second = storage.put(io.BytesIO(data))
    assert first.key == first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.crc32 == zlib.crc32(data) and first.size == len(data)
    assert first.created and not second.created
    objects = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    with storage.open(first.key) as fh:
        assert fh.read() == data
    assert list((tmp_path / "tmp").iterdir()) == []  # no temp file left behind


def test_empty_content(tmp_path):
    storage = LocalStorage(tmp_path)
    obj = storage.put(io.BytesIO(b""))
    assert obj.size == 0 and storage.size(obj.key) == 0


@pytest.mark.parametrize("key", ["../../etc/passwd", "a" * 63, "A" * 64, "/abs", "", None])
def test_keys_never_reach_a_path(tmp_path, key):
    storage = LocalStorage(tmp_path)
    with pytest.raises(StorageError):
        storage.open(key)
    with pytest.raises(StorageError):
        storage.local_path(key)


def test_failed_write_leaves_nothing(tmp_path):
    storage = LocalStorage(tmp_path)

    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buf):
            raise OSError(5, "Input/output error")

    with pytest.raises(StorageError):
        storage.put(Broken())
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not any(p.is_file() for p in (tmp_path / "objects").rglob("*"))


def test_check_fails_on_a_file_in_the_way(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError):
        LocalStorage(blocker).check()


def test_registry(tmp_path):
    assert isinstance(storage_from_url(tmp_path.as_uri()), LocalStorage)
    with pytest.raises(StorageError):
        storage_from_url("ftp://example/x")
