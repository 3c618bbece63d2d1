"""Admin pages: users, groups, audit log, download limits."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import func, select

# recorder as a module, not its function: analytics.recorder imports download, which imports
# auth and (through single sign-on's use of admin.service) this package, while it is half loaded.
from ..analytics import queries
from ..analytics import recorder as recording
from ..audit import ACTION_FAMILIES, audit
from ..coherence import commit_everywhere
from ..config import settings
from ..download import limit_store, limits
from ..extensions import db
from ..health import health_report
from ..models import AuditEntry, Group, User
from ..settings import LOCK_ALL
from . import bp, require_admin
from .dashboard import dashboard
from .forms import ConfirmForm, GroupForm, LimitForm, LimitResetForm, UserForm
from .service import group_uses, save_user, user_matches


@bp.route("/")
def index():
    """The staff and admin start page: today, now, the week's top files, the parts' health
    (staff see the numbers of the files they may read only)."""
    zone = ZoneInfo(settings().analytics_timezone)
    board = dashboard(db.session.connection(), zone, datetime.now(UTC),
                      recording.recorder(current_app).sending_now(),
                      readable=queries.scope_of(current_user))
    return render_template("admin/index.html", board=board, health=health_report())


@bp.route("/limits")
def download_limits():
    """The download limits in force and where each comes from (the environment, an admin,
    a lock), the admission budget, and how often they acted."""
    config = settings()
    named = limit_store.entries(db.session, config)
    return render_template("admin/limits.html",
                           limits=limits.in_force(current_app._get_current_object(),
                                                  limit_store.settings_in_force()),
                           entries=named, addable=limit_store.addable(db.session, config, named),
                           lock_all=dict(config.download_limits_locked).get(LOCK_ALL))


@bp.route("/limits/edit", methods=["GET", "POST"])
def edit_limit():
    """Change the download limit of ``?who=`` (a role, anonymous or group:NAME), or give it
    back to the environment (admins only: staff see the limits, 403 here). A key the
    environment locks is shown with the reason and refused (409); bad input is refused with
    the field's message (400); either way nothing changes. A saved change answers once
    every worker of every node applies it."""
    if not current_user.is_admin:
        abort(403)
    who = request.args.get("who", "")[:80]
    config = settings()
    if not limit_store.may_name(db.session, config, who):
        abort(404)
    shown = limit_store.entry(db.session, config, who)
    form, reset = LimitForm(), LimitResetForm()
    if request.method == "GET" and shown.limit is not None:
        form.connections.data = "" if shown.limit.connections is None else str(
            shown.limit.connections)
        form.rate.data = limit_store.rate_text(shown.limit.rate)
    status = 200
    if request.method == "POST":
        status = 409 if shown.locked is not None else 400
        wants_reset = request.form.get("action") == "reset"
        if shown.locked is None and (reset if wants_reset else form).validate_on_submit():
            changed = limit_store.save(db.session, current_user, config, who,
                                       None if wants_reset else form.limit,
                                       ip=request.remote_addr or "")
            if changed:
                commit_everywhere(db.session)
                flash(_("Saved: every node applies it now."), "info")
            else:
                flash(_("Nothing changed."), "info")
            return redirect(url_for("admin.download_limits"))
    return render_template("admin/limit_edit.html", entry=shown, form=form, reset=reset), status


@bp.route("/users", methods=["GET", "POST"])
def users():
    """List users and create one."""
    require_admin()
    form = UserForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit() and not form.password.data:
            form.password.errors.append(_("A new user needs a password."))
        elif form.validate_on_submit():
            if db.session.scalar(select(User).where(User.username == form.username.data)):
                form.username.errors.append(_("This username is taken."))
            else:
                save_user(db.session, current_user, None, username=form.username.data,
                          display_name=form.display_name.data or "", role=form.role.data,
                          groups=(form.groups.data or "").split(), password=form.password.data,
                          active=form.active.data, ip=request.remote_addr or "")
                db.session.commit()
                flash(_("User %(name)s created.", name=form.username.data), "info")
                return redirect(url_for("admin.users"))
        status = 400
    q = request.args.get("q", "").strip()[:64]
    stmt = select(User).order_by(User.username)
    if q:
        stmt = stmt.where(user_matches(q))
    listed = db.paginate(stmt, page=_page(), per_page=USERS_PER_PAGE, error_out=False)
    return render_template("admin/users.html", users=listed, form=form, q=q,
                           known_groups=_group_names()), status


#: Users shown per page of the users list.
USERS_PER_PAGE = 50


def _page() -> int:
    """The ``page`` argument: a number from 1, else 1."""
    raw = request.args.get("page", "1")
    return max(int(raw), 1) if raw.isascii() and raw.isdigit() and len(raw) < 6 else 1


@bp.route("/users/<id:user_id>", methods=["GET", "POST"])
def edit_user(user_id: int):
    """Change a user's role, groups, state, or reset the password. The answer comes once
    every worker decides by the change: a disabled user (their sessions, remember-me
    cookies and signed links ended for good) is then refused everywhere."""
    require_admin()
    user = db.session.get(User, user_id) or abort(404)
    form = UserForm(obj=user)
    if request.method == "GET":
        form.groups.data = " ".join(sorted(user.group_names))
    if form.validate_on_submit():
        if user.id == current_user.id and (not form.active.data or form.role.data != "admin"):
            form.role.errors.append(_("You cannot disable or demote yourself."))
        elif user.active and not form.active.data and not form.confirm_disable.data:
            form.confirm_disable.errors.append(_("Tick the box to confirm."))
        else:
            save_user(db.session, current_user, user, username=user.username,
                      display_name=form.display_name.data or "", role=form.role.data,
                      groups=(form.groups.data or "").split(), password=form.password.data,
                      active=form.active.data, ip=request.remote_addr or "")
            commit_everywhere(db.session)
            flash(_("Saved."), "info")
            return redirect(url_for("admin.edit_user", user_id=user.id))
    status = 400 if request.method == "POST" else 200
    return render_template("admin/user_edit.html", user=user, form=form,
                           known_groups=_group_names()), status


def _group_names() -> list[str]:
    """Every group's name, for the user form's list to pick from."""
    return list(db.session.scalars(select(Group.name).order_by(Group.name)))


@bp.route("/groups", methods=["GET", "POST"])
def groups():
    """List groups with member counts, and create one."""
    require_admin()
    form = GroupForm()
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            if db.session.scalar(select(Group).where(Group.name == form.name.data)):
                form.name.errors.append(_("This group exists already."))
            else:
                db.session.add(Group(name=form.name.data,
                                     description=form.description.data or ""))
                audit(db.session, "group.created", actor=current_user, target=form.name.data,
                      client_ip=request.remote_addr or "")
                db.session.commit()
                return redirect(url_for("admin.groups"))
        status = 400
    rows = db.session.execute(
        select(Group, func.count(User.id)).outerjoin(Group.members)
        .group_by(Group.id).order_by(Group.name)
    ).all()
    return render_template("admin/groups.html", rows=rows, form=form), status


@bp.route("/groups/<id:group_id>/delete", methods=["GET", "POST"])
def delete_group(group_id: int):
    """Delete a group, once confirmed. A group that files' access still names, or that has
    members, is refused with those files and people (409): deleting it would silently take
    their access away; change them first."""
    require_admin()
    group = db.session.get(Group, group_id) or abort(404)
    files, members = group_uses(db.session, group)
    form = ConfirmForm()
    in_use = bool(files or members)
    if request.method == "POST" and not in_use and form.validate_on_submit():
        audit(db.session, "group.deleted", actor=current_user, target=group.name,
              client_ip=request.remote_addr or "")
        db.session.delete(group)
        db.session.commit()
        flash(_("User group %(name)s deleted.", name=group.name), "info")
        return redirect(url_for("admin.groups"))
    status = 200 if request.method == "GET" else 409 if in_use else 400
    return render_template("admin/group_delete.html", group=group, files=files,
                           members=members, form=form), status


@bp.route("/audit")
def audit_log():
    """The audit log, newest first, filterable by action prefix."""
    require_admin()
    action = request.args.get("action", "")[:40]
    page = _page()
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
    if action:
        stmt = stmt.where(AuditEntry.action.startswith(action))
    entries = db.session.scalars(stmt.limit(100).offset((max(page, 1) - 1) * 100)).all()
    return render_template("admin/audit.html", entries=entries, action=action, page=page,
                           families={k: str(v) for k, v in ACTION_FAMILIES.items()})
