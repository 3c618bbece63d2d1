"""Staff and admin file management: edit, publish drafts and pending versions, discard a
pending version, soft delete, restore (admins)."""

from __future__ import annotations

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from sqlalchemy import select
from wtforms import StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from ..access import manageable
from ..audit import audit
from ..coherence import commit_everywhere
from ..extensions import db
from ..files import discard_version as discard_pending
from ..files import publish_version as publish_pending
from ..models import File, FileVersion, Group, User, utcnow
from ..storage import get_storage
from . import bp
from .forms import ACCESS_LABELS, AccessPickerForm, ConfirmForm
from .service import user_matches


class FileForm(AccessPickerForm):
    """What staff may change about a file; versions come through uploads."""

    title = StringField(_l("Title"), validators=[DataRequired(), Length(max=255)])
    category = StringField(_l("Category"), validators=[Optional(), Length(max=64)])
    description = TextAreaField(_l("Description"), validators=[Optional(), Length(max=5000)])


def managed_file(file_id: int) -> File:
    """The file if the current user may manage it, else 404."""
    file = db.session.get(File, file_id)
    if file is None or not manageable(current_user, file):
        abort(404)
    if file.deleted_at is not None and not current_user.is_admin:
        abort(404)
    return file


@bp.route("/files")
def files():
    """Files the current user manages (admins: all, deleted ones too, to restore)."""
    stmt = select(File).order_by(File.updated_at.desc())
    if not current_user.is_admin:
        stmt = stmt.where(File.owner_id == current_user.id, File.deleted_at.is_(None))
    return render_template("admin/files.html", files=db.session.scalars(stmt.limit(500)).all())


#: How many people the access picker lists with the page; typing asks /admin/people for more.
PEOPLE_LISTED = 200


def upload_context() -> dict:
    """What the upload widget and the access picker show: known categories, the size limit,
    the groups and (the first PEOPLE_LISTED) people to choose from."""
    from ..catalog.service import human_size

    categories = db.session.scalars(select(File.category).distinct().order_by(File.category))
    return {"categories": [c for c in categories if c],
            "max_size": human_size(current_app.config["MAX_UPLOAD_BYTES"]),
            "picker_groups": db.session.scalars(select(Group).order_by(Group.name)).all(),
            "picker_people": db.session.scalars(
                select(User).where(User.active.is_(True)).order_by(User.username)
                .limit(PEOPLE_LISTED)).all(),
            "access_labels": ACCESS_LABELS}


@bp.route("/people")
def people():
    """JSON for the access picker: up to 20 active users whose name or display name
    contains ``q``."""
    q = request.args.get("q", "").strip()[:64]
    if not q:
        return jsonify(people=[])
    found = db.session.scalars(
        select(User).where(User.active.is_(True), user_matches(q))
        .order_by(User.username).limit(20)).all()
    return jsonify(people=[{"username": u.username, "display_name": u.display_name}
                           for u in found])


@bp.route("/upload")
def upload():
    """Drag-and-drop upload of several files (tus, resumable)."""
    return render_template("admin/upload.html", **upload_context())


@bp.route("/files/<id:file_id>", methods=["GET", "POST"])
def edit_file(file_id: int):
    """Edit title, category, description and access rule; changes of access are audited."""
    file = managed_file(file_id)
    form = FileForm(obj=file)
    if request.method != "POST":
        form.show_access(file.access)
    if form.validate_on_submit():
        access = form.access
        clash = db.session.scalar(select(File).where(
            File.title == form.title.data, File.category == (form.category.data or ""),
            File.id != file.id))
        if clash is not None:
            form.title.errors.append(_("Another file in this category has this title."))
        else:
            ip = request.remote_addr or ""
            if access != file.access:
                audit(db.session, "file.access_changed", actor=current_user,
                      target=f"{file.id} {file.title}", detail=f"{file.access} -> {access}",
                      client_ip=ip)
            file.title = form.title.data
            file.category = form.category.data or ""
            file.description = form.description.data or ""
            file.access = access
            file.updated_at = utcnow()
            db.session.commit()
            flash(_("Saved."), "info")
            return redirect(url_for("admin.edit_file", file_id=file.id))
    status = 400 if request.method == "POST" else 200
    return render_template("admin/file_edit.html", file=file, form=form,
                           **upload_context()), status


@bp.route("/files/<id:file_id>/publish", methods=["POST"])
def publish_file(file_id: int):
    """Publish a draft: from now on the audience its access rule names may read it."""
    file = managed_file(file_id)
    if file.draft:
        file.draft = False
        file.updated_at = utcnow()
        audit(db.session, "file.published", actor=current_user,
              target=f"{file.id} {file.title}", detail=file.access,
              client_ip=request.remote_addr or "")
        db.session.commit()
        flash(_("Published: %(title)s can now be read by the people its access names.",
                title=file.title), "info")
    return redirect(url_for("admin.edit_file", file_id=file.id))


def pending_version(file: File, number: int) -> FileVersion:
    """The file's pending version ``number``, else 404 (published versions stay as they
    are)."""
    version = file.version(number)
    if version is None or version.published:
        abort(404)
    return version


@bp.route("/files/<id:file_id>/versions/<int:number>/publish", methods=["POST"])
def publish_version(file_id: int, number: int):
    """Publish a pending version: the document's readers get it (when it is the newest
    published one). The answer comes once every worker and node serves it
    (commit_everywhere), so "published" on the page is true for every student."""
    file = managed_file(file_id)
    version = pending_version(file, number)
    publish_pending(version)
    audit(db.session, "file.version_published", actor=current_user,
          target=f"{file.id} {file.title}",
          detail=f"version {version.number}: {version.original_filename}",
          client_ip=request.remote_addr or "")
    commit_everywhere(db.session)
    current = file.current
    if current is not None and current.number != number:  # a newer one was published first
        flash(_("Published version %(number)d of %(title)s; its readers still get the newer "
                "version %(current)d.", number=number, title=file.title,
                current=current.number), "info")
    else:
        flash(_("Published: version %(number)d of %(title)s is what its readers download "
                "now.", number=number, title=file.title), "info")
    return redirect(url_for("admin.edit_file", file_id=file.id))


@bp.route("/files/<id:file_id>/versions/<int:number>/discard", methods=["POST"])
def discard_version(file_id: int, number: int):
    """Delete a pending version, once confirmed, with its stored content unless another
    version holds the same bytes; nobody but staff ever saw it."""
    file = managed_file(file_id)
    version = pending_version(file, number)
    if not ConfirmForm().validate_on_submit():
        flash(_("Tick the box to confirm."), "error")
        return redirect(url_for("admin.edit_file", file_id=file.id))
    audit(db.session, "file.version_discarded", actor=current_user,
          target=f"{file.id} {file.title}",
          detail=f"version {version.number}: {version.original_filename}, "
                 f"sha256 {version.sha256}",
          client_ip=request.remote_addr or "")
    discard_pending(db.session, get_storage(), version, commit_everywhere)
    flash(_("Discarded version %(number)d of %(title)s.", number=number, title=file.title),
          "info")
    return redirect(url_for("admin.edit_file", file_id=file.id))


@bp.route("/files/<id:file_id>/delete", methods=["GET", "POST"])
def delete_file(file_id: int):
    """Soft delete, once confirmed: the file disappears for everyone; admins can restore
    it. Unconfirmed, the confirmation page (400 for a POST)."""
    file = managed_file(file_id)
    form = ConfirmForm()
    if not form.validate_on_submit():
        return render_template("admin/file_delete.html", file=file, form=form), (
            400 if request.method == "POST" else 200)
    if file.deleted_at is None:
        file.deleted_at = utcnow()
        audit(db.session, "file.deleted", actor=current_user, target=f"{file.id} {file.title}",
              client_ip=request.remote_addr or "")
        db.session.commit()
    flash(_("Deleted. An administrator can restore it."), "info")
    return redirect(url_for("admin.files"))


@bp.route("/files/<id:file_id>/restore", methods=["POST"])
def restore_file(file_id: int):
    """Undo a soft delete (admins)."""
    if not current_user.is_admin:
        abort(404)
    file = managed_file(file_id)
    if file.deleted_at is not None:
        file.deleted_at = None
        audit(db.session, "file.restored", actor=current_user, target=f"{file.id} {file.title}",
              client_ip=request.remote_addr or "")
        db.session.commit()
    flash(_("Restored."), "info")
    return redirect(url_for("admin.files"))
