"""Command line: ``flask --app wsgi user|file|demo ...`` (``db`` comes from Flask-Migrate)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .access import NAME, normalize_access
from .auth.forms import MIN_PASSWORD
from .auth.sso.mapping import DIRECTORY_METHODS
from .backup.cli import backup_cli
from .coherence import commit_everywhere
from .errorpages import error_pages_command
from .extensions import db
from .files import add_version, discard
from .models import ROLES, Group, User
from .storage import StorageError, get_storage

user_cli = AppGroup("user", help="Create and import users.")
file_cli = AppGroup("file", help="Add files and versions.")


def fail(message: str) -> None:
    """One line on stderr and exit status 1; nothing was written."""
    db.session.rollback()
    raise click.ClickException(message)


def groups_by_name(names: list[str]) -> list[Group]:
    """The named groups, created when missing."""
    found = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if not NAME.match(name):
            fail(f"invalid group name {name!r}")
        group = db.session.scalar(select(Group).where(Group.name == name))
        if group is None:
            group = Group(name=name)
            db.session.add(group)
        found.append(group)
    return found


def check_password(password: str | None) -> None:
    if password is not None and len(password) < MIN_PASSWORD:
        fail(f"password must have at least {MIN_PASSWORD} characters")


def set_method(user: User, method: str, password: str | None, where: str = "") -> None:
    """Make ``user`` an account of ``method``: local with a password, or a directory's
    without one (its first sign-in by that method binds it). A user already bound to a
    directory account, or with a password of its own, is not moved: ``user link`` is the
    way."""
    if method != "local" and password:
        fail(f"{where}{method} users have no portal password")
    if user.id is not None and method != user.auth_source and (
            user.identities or user.has_usable_password()):
        fail(f"{where}user {user.username!r} is a {user.auth_source} account already: "
             "use user link")
    user.auth_source = method
    if method != "local":
        user.set_unusable_password()


@user_cli.command("create")
@click.argument("name")
@click.option("--password", help="At least 8 characters (a local user's).")
@click.option("--method", type=click.Choice(("local", *DIRECTORY_METHODS)), default="local",
              show_default=True,
              help="A directory's user has no password: its first sign-in by that method "
                   "binds it.")
@click.option("--role", type=click.Choice(ROLES), default="student", show_default=True)
@click.option("--group", "groups", multiple=True, help="Group to join (repeatable).")
@click.option("--display-name", default="", help="Name shown on pages.")
def user_create(name, password, method, role, groups, display_name):
    """Create a user: local with a password, or reserved for one directory's sign-in."""
    if not NAME.match(name):
        fail(f"invalid username {name!r}")
    if method == "local" and not password:
        fail("a local user needs --password")
    check_password(password)
    if db.session.scalar(select(User).where(User.username == name)) is not None:
        fail(f"user {name!r} already exists")
    user = User(username=name, role=role, display_name=display_name or name)
    if method == "local":
        user.set_password(password)
    set_method(user, method, password)
    user.groups = groups_by_name(list(groups))
    db.session.add(user)
    _commit()
    click.echo(f"{user.id}\t{user.username}\t{user.role}")


@user_cli.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
def user_import(path):
    """Create or update users from a CSV (username, display_name, role, groups, password,
    and optionally method).

    groups are separated by ';' or spaces; an empty password keeps an existing one
    (a new user without a password cannot sign in until an admin sets one). method
    (local, ldap, cas, oidc; empty: local for a new user, unchanged for an existing one)
    reserves a user without a password for that directory's sign-in.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        fail(f"cannot read {path}: {exc}")
    created = updated = 0
    for line, row in enumerate(rows, start=2):
        name = (row.get("username") or "").strip()
        role = (row.get("role") or "student").strip() or "student"
        if not NAME.match(name):
            fail(f"{path}:{line}: invalid username {name!r}")
        if role not in ROLES:
            fail(f"{path}:{line}: unknown role {role!r}")
        password = (row.get("password") or "").strip() or None
        if password is not None and len(password) < MIN_PASSWORD:
            fail(f"{path}:{line}: password must have at least {MIN_PASSWORD} characters")
        method = (row.get("method") or "").strip() or None
        if method not in (None, "local", *DIRECTORY_METHODS):
            fail(f"{path}:{line}: unknown method {method!r}")
        user = db.session.scalar(select(User).where(User.username == name))
        if user is None:
            user = User(username=name)
            db.session.add(user)
            created += 1
        else:
            updated += 1
        user.display_name = (row.get("display_name") or "").strip() or name
        user.role = role
        if password is not None:
            user.set_password(password)
        if method is not None:
            set_method(user, method, password, f"{path}:{line}: ")
        groups = (row.get("groups") or "").replace(";", " ").split()
        user.groups = groups_by_name(groups)
    _commit()
    click.echo(f"created {created}, updated {updated}")


@user_cli.command("sync-ldap")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
def user_sync_ldap(dry_run):
    """Create, update and disable the LDAP users and their groups from the directory.

    A user the directory disables or no longer lists is disabled as on the admin pages: their
    sessions, remember-me cookies and signed links end for good, refused everywhere by the
    time the command returns."""
    from .audit import audit
    from .auth.sso import ldap
    from .auth.sso.mapping import sync_accounts
    from .config import settings

    cfg = settings()
    if not cfg.ldap_url or not cfg.ldap_user_base:
        fail("user sync-ldap needs PORTAL_LDAP_URL and PORTAL_LDAP_USER_BASE")
    try:
        accounts = ldap.all_accounts(cfg, cfg.sso_role_map)
    except ldap.DirectoryUnavailable as exc:
        fail(f"the directory cannot be read: {exc}")
    report = sync_accounts(db.session, accounts, source="ldap", issuer=ldap.issuer(cfg),
                           role_map=cfg.sso_role_map, default_role=cfg.sso_default_role)
    for line in report.skipped:
        click.echo(f"skipped {line}", err=True)
    if dry_run:
        db.session.rollback()
        click.echo(f"dry run: {report}")
        return
    audit(db.session, "user.sync_ldap", detail=str(report))
    _commit(everywhere=bool(report.disabled))
    click.echo(str(report))


def _directory_user(name: str) -> User:
    user = db.session.scalar(select(User).where(User.username == name))
    if user is None:
        fail(f"no user {name!r}")
    return user


def _issuer(method: str, given: str | None) -> str:
    """The issuer given, else this portal's own for ``method``."""
    from .auth.sso import cas, ldap, oidc
    from .auth.sso.mapping import issuer_id
    from .config import settings

    if given:
        return given if method == "ldap" else issuer_id(given)
    cfg = settings()
    configured = {"ldap": cfg.ldap_user_base, "cas": cfg.cas_server_url,
                  "oidc": cfg.oidc_issuer}[method]
    if not configured:
        fail(f"no {method} issuer is configured here: give --issuer")
    return {"ldap": ldap.issuer, "cas": cas.issuer, "oidc": oidc.issuer}[method](cfg)


@user_cli.command("link")
@click.argument("name")
@click.option("--method", type=click.Choice(DIRECTORY_METHODS), required=True)
@click.option("--issuer", help="OIDC: the issuer (iss); CAS: the server URL; LDAP: "
                               "ldap:///USER-BASE. Default: this portal's own.")
@click.option("--subject", help="OIDC: the sub; CAS: the CAS user id (default NAME); LDAP: "
                                "the entry's subject (default: looked up by NAME).")
def user_link(name, method, issuer, subject):
    """Let a directory account sign in as user NAME, whatever name it brings (audited).

    The login.failure entry of a refused sign-in names the method, issuer and subject."""
    from .auth.sso import ldap
    from .auth.sso.mapping import LinkRefused, link
    from .config import settings

    user = _directory_user(name)
    issuer = _issuer(method, issuer)
    if not subject and method == "cas":
        subject = name
    elif not subject and method == "ldap":
        try:
            subject = ldap.subject_of(settings(), name)
        except ldap.DirectoryUnavailable as exc:
            fail(f"the directory cannot be read: {exc}")
        if subject is None:
            fail(f"the directory has no one entry named {name!r}: give --subject")
    elif not subject:
        fail("an OIDC link needs --subject (the sub)")
    try:
        made = link(db.session, user, method=method, issuer=issuer, subject=subject)
    except LinkRefused as exc:
        fail(str(exc))
    _commit()
    click.echo(f"{'linked' if made else 'already linked'} {name}: method={method} "
               f"issuer={issuer} subject={subject}")


@user_cli.command("unlink")
@click.argument("name")
@click.option("--method", type=click.Choice(DIRECTORY_METHODS), required=True)
@click.option("--issuer", help="Default: this portal's own for the method.")
@click.option("--subject", help="Only this subject's link (default: every one at the issuer).")
def user_unlink(name, method, issuer, subject):
    """Remove directory accounts' links to user NAME and end the user's sessions (audited).

    A user of that method left with no link is bound again by its name's next sign-in."""
    from .auth.sso.mapping import unlink

    user = _directory_user(name)
    removed = unlink(db.session, user, method=method, issuer=_issuer(method, issuer),
                     subject=subject)
    if not removed:
        fail(f"user {name!r} has no such link")
    _commit()
    click.echo(f"unlinked {removed} from {name}")


@file_cli.command("add")
@click.argument("paths", nargs=-1, required=True)
@click.option("--title", help="Title (default: the file name without extension).")
@click.option("--category", default="", help="Category, e.g. 课程表.")
@click.option("--access", default="login", show_default=True,
              help="public, login, group:NAME or user:NAME.")
@click.option("--owner", help="Username of the owner.")
def file_add(paths, title, category, access, owner):
    """Add files; a title and category that exist already get a new version."""
    try:
        access = normalize_access(access)
    except ValueError as exc:
        fail(str(exc))
    owner_user = None
    if owner:
        owner_user = db.session.scalar(select(User).where(User.username == owner))
        if owner_user is None:
            fail(f"no user {owner!r}")
    # Check every path before storing anything, so a bad one leaves nothing behind.
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            fail(f"{raw}: no such file")
        if not path.is_file():
            fail(f"{raw}: not a regular file")
        if not os.access(path, os.R_OK):
            fail(f"{raw}: not readable")
    storage = get_storage()
    stored = []
    lines = []
    try:
        for raw in paths:
            path = Path(raw)
            with open(path, "rb") as fh:
                version = add_version(
                    db.session, storage, fh, filename=path.name, title=title or path.stem,
                    category=category, access=access, owner=owner_user, uploader=owner_user,
                )
            stored.append(version.stored)
            lines.append(f"{version.file.id}\t{version.file.title}")
        db.session.commit()
    except (OSError, StorageError, SQLAlchemyError, ValueError) as exc:
        db.session.rollback()
        for obj in stored:
            discard(db.session, storage, obj)
        fail(f"cannot add files: {exc}")
    for line in lines:
        click.echo(line)


def _commit(*, everywhere: bool = False) -> None:
    """Commit, or fail with the database's error; ``everywhere``: return only once every
    worker decides by the commit (coherence.commit_everywhere)."""
    try:
        if everywhere:
            commit_everywhere(db.session)
        else:
            db.session.commit()
    except SQLAlchemyError as exc:
        fail(f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}")


@click.command("demo")
@with_appcontext
@click.option("--big-mb", type=int, default=None,
              help="Size of the generated lecture recording (default PORTAL_DEMO_BIG_FILE_MB).")
@click.option("--history", type=click.IntRange(min=0), default=None,
              help="About how many download requests of history to seed over the last 60 "
                   "days when none is recorded yet [default: 6000]; 0 seeds none.")
def demo_command(big_mb, history):
    """Seed demo users, groups, documents and a term of download history (safe to run
    twice)."""
    from flask import current_app

    from .analytics.materialise import Settings
    from .demo import HISTORY_EVENTS, seed, seed_history

    size = current_app.config["DEMO_BIG_FILE_MB"] if big_mb is None else big_mb
    try:
        report = seed(db.session, get_storage(), big_file_mb=size)
        with db.engine.begin() as conn:
            history_report = seed_history(
                conn, Settings.from_config(current_app.config),
                events=HISTORY_EVENTS if history is None else history)
    except (StorageError, SQLAlchemyError, OSError) as exc:
        db.session.rollback()
        fail(f"demo failed: {exc}")
    click.echo(report)
    if history_report:
        click.echo(history_report)


storage_cli = AppGroup("storage", help="Check and migrate the storage backend.")


@storage_cli.command("check")
def storage_check():
    """Write, read back and delete a probe object: prints ok or the reason (exit 1)."""
    try:
        get_storage().check()
    except StorageError as exc:
        fail(f"storage: {exc}")
    click.echo("ok")


@storage_cli.command("migrate")
@click.option("--to", "target_url", required=True, help="Target URL: file:///dir or s3://b/p.")
@click.option("--verify", is_flag=True, help="Also read every object back and hash it.")
def storage_migrate(target_url, verify):
    """Copy every version's content to another backend (safe to run again)."""
    from .models import FileVersion
    from .storage import storage_from_url
    from .storage.migrate import migrate

    try:
        target = storage_from_url(target_url)
        target.check()
    except StorageError as exc:
        fail(f"target {target_url}: {exc}")
    objects = db.session.execute(
        select(FileVersion.storage_key, FileVersion.sha256, FileVersion.size).distinct()
        .order_by(FileVersion.storage_key)).all()
    try:
        report = migrate(get_storage(), target, objects, verify=verify)
    finally:
        if hasattr(target, "close"):
            target.close()
    for key, reason in report.failed:
        click.echo(f"failed {key}: {reason}", err=True)
    click.echo(report.summary())
    if report.failed:
        raise click.exceptions.Exit(1)


def register(app: Flask) -> None:
    """Attach the command groups to the app."""
    app.cli.add_command(user_cli)
    app.cli.add_command(file_cli)
    app.cli.add_command(demo_command)
    app.cli.add_command(storage_cli)
    app.cli.add_command(backup_cli)
    app.cli.add_command(error_pages_command)


