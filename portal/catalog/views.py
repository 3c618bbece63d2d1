"""Catalog pages and the JSON catalog."""

from __future__ import annotations

from flask import abort, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..extensions import db
from ..models import File
from ..urls import absolute_url
from . import bp
from .service import (
    SORTS,
    categories,
    download_counts,
    my_download_history,
    readable_file,
    search_files,
)


def file_json(file: File) -> dict:
    """The public description of a file and its published versions (a pending one waits
    for its publication: only the admin page shows it)."""
    current = file.current
    return {
        "id": file.id,
        "title": file.title,
        "category": file.category,
        "description": file.description,
        "access": file.access,
        "size": current.size if current else 0,
        "sha256": current.sha256 if current else None,
        "mime_type": current.mime_type if current else None,
        "filename": current.original_filename if current else None,
        "updated_at": file.updated_at.isoformat(),
        "download_url": absolute_url("download.download", file_id=file.id),
        "versions": [
            {"number": v.number, "size": v.size, "sha256": v.sha256,
             "filename": v.original_filename, "created_at": v.created_at.isoformat()}
            for v in file.published_versions
        ],
    }


def refuse():
    """Not readable: anonymous callers are asked to sign in (so existence never leaks to them
    either), signed-in users get 404 whether the file is missing or not theirs."""
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()
    abort(404)


def _page_arg() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 7 else 1


@bp.route("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico before reading the page's icon link: the same icon."""
    # The plain name: browsers keep a 301 for good, and a hashed name ends with its content.
    return redirect(url_for("static", filename="favicon.svg", hashed=False), 301)


@bp.route("/")
def index():
    """The catalog: search, categories, pagination."""
    q = request.args.get("q", "")[:200]
    category = request.args.get("category", "")[:64]
    sort = request.args.get("sort", "newest")
    sort = sort if sort in SORTS else "newest"
    page = search_files(db.session, current_user, query=q, category=category,
                        page=_page_arg(), per_page=current_app.config["PER_PAGE"], sort=sort)
    return render_template("catalog/index.html", page=page, q=q, category=category, sort=sort,
                           categories=categories(db.session, current_user))


@bp.route("/me/downloads")
@login_required
def my_downloads():
    """What I downloaded, when, and how much of it arrived (logical downloads)."""
    return render_template("catalog/my_downloads.html",
                           rows=my_download_history(db.session, current_user))


@bp.route("/files/<id:file_id>")
def file_page(file_id: int):
    """A file's page: size, SHA-256, versions and download links."""
    file = readable_file(db.session, current_user, file_id)
    if file is None:
        return refuse()
    return render_template("catalog/file.html", file=file,
                           downloads=download_counts(db.session, [file.id]).get(file.id, 0))


@bp.route("/api/files")
def api_files():
    """The JSON catalog of what the caller may see (anonymous callers see public files)."""
    page = search_files(db.session, current_user, query=request.args.get("q", "")[:200],
                        category=request.args.get("category", "")[:64], page=_page_arg(),
                        per_page=min(100, current_app.config["PER_PAGE"]))
    return jsonify(files=[file_json(f) for f in page.items], total=page.total, page=page.page,
                   pages=page.pages)


@bp.route("/api/files/<id:file_id>")
def api_file(file_id: int):
    """One file as JSON; 401 without a session for a non-public file, 404 when not readable."""
    file = readable_file(db.session, current_user, file_id)
    if file is None:
        return refuse()
    return jsonify(file_json(file))
