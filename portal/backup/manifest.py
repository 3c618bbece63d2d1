"""A backup's manifest: what it holds and the SHA-256 of every file, written last.

``manifest.json`` is the proof that a backup is whole (a backup that died half-way has
none), ``manifest.sha256`` the manifest's own checksum. Objects are listed as
``[key, sha256, size]``: their file's name is their SHA-256, so the list is their checksum.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from .place import BackupError, Place, check_name, sha256_of

FORMAT = "campus-portal-backup/1"


def portal_version() -> str:
    """The installed portal's version (``unknown`` in a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("campus-portal")
    except PackageNotFoundError:
        return "unknown"


def now_text() -> str:
    """The time now, UTC, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(place: Place, manifest: dict) -> None:
    """Write the manifest and its checksum: the backup is complete from here on."""
    data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode()
    place.write_bytes("manifest.json", data)
    place.write_bytes("manifest.sha256", f"{hashlib.sha256(data).hexdigest()}\n".encode())


def read_manifest(place: Place) -> dict:
    """The manifest, checked against its checksum and format; BackupError otherwise."""
    data = place.read_bytes("manifest.json")
    expected = place.read_bytes("manifest.sha256").decode("ascii", "replace").strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise BackupError(f"{place.url}: manifest.json does not match manifest.sha256")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BackupError(f"{place.url}: manifest.json is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{place.url}: not a backup of this portal (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


def file_problems(place: Place, manifest: dict, names: list[str] | None = None) -> list[str]:
    """What is wrong with the backup's files (all, or ``names``) against their checksums."""
    problems = []
    listed = manifest.get("files") or {}
    for name in (listed if names is None else names):
        entry = listed.get(name)
        if entry is None:
            problems.append(f"{name}: not in the manifest")
            continue
        try:
            with place.open(check_name(name)) as stream:
                sha, size = sha256_of(stream)
        except BackupError as exc:
            problems.append(str(exc))
            continue
        if (sha, size) != (entry.get("sha256"), entry.get("size")):
            problems.append(f"{name}: SHA-256 {sha} of {size} bytes, the manifest says "
                            f"{entry.get('sha256')} of {entry.get('size')} bytes")
    return problems
