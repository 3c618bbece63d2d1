"""Static assets under content-hashed names, with precompressed copies beside them.

``static/js/portal.js`` is also written as ``js/portal.<12 hex of its SHA-256>.js``: a new
content is a new URL, so a browser (and nginx, ``deploy/nginx.conf``) may keep every hashed
URL for a year without asking again (``immutable``), and a page never pairs new HTML with an
old script. The plain names are written too and are revalidated on every use (``no-cache``).
Each text asset gets a ``.gz`` copy (and a ``.br`` one when the ``brotli`` module happens to
be installed: the portal does not depend on it), which the portal (portal/assets.py) and
nginx (``gzip_static``) send to clients that accept it, so nothing is compressed per request.

Why not Flask-Static-Digest: it writes its digests into the source static/ folder (a wheel's
package folder is read-only, and a checkout would carry build output next to its sources),
and its templates call ``static_url_for`` instead of ``url_for('static')``. The map below is a
few lines; the serving is WhiteNoise's (portal/assets.py).

Standard library only: setup.py loads this file by path to put a built tree into the wheel,
in a build environment that has none of the portal's dependencies.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

#: Hex digits of the SHA-256 in a hashed name: 48 bits, no collision among a few dozen files.
HASH_CHARS = 12
#: The built tree's index: {"files": {plain name: hashed name}}, written last.
MANIFEST = "manifest.json"
#: Text formats worth compressing; images and fonts are compressed already.
COMPRESSIBLE = frozenset({".js", ".css", ".svg", ".json", ".map", ".txt", ".md", ".html",
                          ".xml"})
#: A compressed copy is kept only when it saves at least this share (headers cost bytes too).
MIN_SAVING = 0.1

try:  # optional: only when something else installed it (it is not a portal dependency)
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None


def hashed_name(name: str, data: bytes) -> str:
    """``name`` with the content's hash before its last suffix: ``js/a.min.js`` becomes
    ``js/a.min.<hash>.js``, ``VERSION`` becomes ``VERSION.<hash>``."""
    digest = hashlib.sha256(data).hexdigest()[:HASH_CHARS]
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.rpartition(".")
    new = f"{stem}.{digest}.{suffix}" if dot and stem else f"{base}.{digest}"
    return f"{folder}/{new}" if folder else new


def source_files(source: Path) -> list[str]:
    """Every file below ``source`` as a /-separated relative name, sorted."""
    return sorted(path.relative_to(source).as_posix() for path in source.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)


def digest_map(source: Path) -> dict[str, str]:
    """{plain name: hashed name} of every file below ``source`` (reads them all: ~330 KB)."""
    return {name: hashed_name(name, (source / name).read_bytes())
            for name in source_files(source)}


def read_manifest(built: Path) -> dict[str, str] | None:
    """The {plain: hashed} map a build wrote into ``built``, None when there is none."""
    try:
        return json.loads((built / MANIFEST).read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, data: bytes) -> None:
    # Replaced whole: a server reading the folder meanwhile sees the old file or the new one.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def compressed(name: str, data: bytes) -> dict[str, bytes]:
    """{suffix: bytes} of the compressed copies worth keeping for ``name`` (maybe none)."""
    if Path(name).suffix.lower() not in COMPRESSIBLE:
        return {}
    copies = {".gz": gzip.compress(data, compresslevel=9, mtime=0)}  # mtime 0: reproducible
    if brotli is not None:
        copies[".br"] = brotli.compress(data, quality=11)
    return {suffix: body for suffix, body in copies.items()
            if len(body) <= len(data) * (1 - MIN_SAVING)}


def build(source: Path, target: Path) -> dict[str, int]:
    """Write every file of ``source`` into ``target`` under its plain and its hashed name,
    each with its compressed copies, then the manifest. Hashed files of earlier builds stay
    (a page an older node rendered may still ask for them). Returns byte counts:
    ``files``, ``bytes`` (all plain files), ``text_bytes`` (those compressed) and
    ``gzip_bytes`` (their .gz copies)."""
    names = digest_map(source)
    stats = {"files": len(names), "bytes": 0, "text_bytes": 0, "gzip_bytes": 0}
    for name, hashed in names.items():
        data = (source / name).read_bytes()
        copies = compressed(name, data)
        stats["bytes"] += len(data)
        if ".gz" in copies:
            stats["text_bytes"] += len(data)
            stats["gzip_bytes"] += len(copies[".gz"])
        for written in (hashed, name):
            _write(target / written, data)
            for suffix in (".gz", ".br"):
                copy = target / (written + suffix)
                if suffix in copies:
                    _write(copy, copies[suffix])
                elif copy.exists():  # a copy an earlier build kept would now be stale
                    copy.unlink()
    _write(target / MANIFEST, json.dumps({"files": names}, indent=1, sort_keys=True,
                                         ensure_ascii=False).encode("utf-8"))
    return stats
