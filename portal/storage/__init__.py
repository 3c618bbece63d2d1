"""Storage backends, chosen by PORTAL_STORAGE_URL through one registry."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from flask import current_app

from .base import Storage, StorageError, StoredObject
from .local import LocalStorage

__all__ = ["Storage", "StorageError", "StoredObject", "get_storage", "storage_from_url"]


def _local(url) -> Storage:
    if url.netloc not in ("", "localhost"):
        raise StorageError("file:// storage URLs must be absolute local paths")
    return LocalStorage(unquote(url.path))


def _s3(url) -> Storage:
    from .s3 import S3Storage  # boto3 is imported only when an s3:// URL is used

    return S3Storage(url.netloc, unquote(url.path))


BACKENDS: dict[str, Callable[..., Storage]] = {"file": _local, "s3": _s3}


def storage_from_url(url: str) -> Storage:
    """Build the backend named by the URL's scheme, or raise StorageError."""
    parts = urlsplit(url)
    factory = BACKENDS.get(parts.scheme)
    if factory is None:
        raise StorageError(f"unsupported storage URL scheme {parts.scheme!r} (use file:// or s3://)")
    return factory(parts)


def get_storage() -> Storage:
    """The current app's storage backend."""
    return current_app.extensions["portal_storage"]
