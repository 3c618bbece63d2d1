"""Database models: accounts, files and their versions, download events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import has_app_context
from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates
from werkzeug.security import check_password_hash, generate_password_hash

from .config import Settings, settings
from .extensions import db

ROLES = ("student", "staff", "admin")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (stored as such on both databases)."""
    return datetime.now(UTC)


class UTCDateTime(db.TypeDecorator):
    """A DateTime that always comes back timezone-aware UTC, also from SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


user_groups = Table(
    "user_groups",
    db.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


#: The password hash of directory users: not a hash any password gives (Werkzeug's hashes
#: are "method$salt$hash"), so check_password refuses every password.
UNUSABLE_PASSWORD = "!directory"


class Roles(UserMixin):
    """What an account may do, from its ``role`` and ``active`` columns: shared by the ORM
    User and the plain SnapshotUser of the download path (portal/auth/users.py)."""

    #: The session token (portal/auth/tokens.py) this user signed in or was loaded with.
    session_token: str | None = None

    def get_id(self) -> str:
        """What Flask-Login keeps in the session and the remember-me cookie: the session
        token, never the bare id (so that a session can be revoked on its own)."""
        if self.session_token is None:
            raise RuntimeError("no session token: sign in through auth.views.sign_in")
        return self.session_token

    @property
    def is_active(self) -> bool:  # Flask-Login refuses sessions of disabled users
        return self.active

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_staff(self) -> bool:
        """Staff and admins may upload and manage files."""
        return self.role in ("staff", "admin")


class User(Roles, db.Model):
    """A student, staff member or admin."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="student")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Part of every session and remember-me token (portal/auth/tokens.py): bumping it ends
    #: all of the user's sessions and signed links (end_sessions).
    session_gen: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Where the account lives: "local" (a portal password) or the directory it came from
    #: ("ldap", "cas", "oidc"), whose users never have a usable password here. Which
    #: directory account it is lies in ``identities``; a directory user without an identity
    #: of its own method is unbound, and the first sign-in of its name by that method binds it.
    auth_source: Mapped[str] = mapped_column(String(8), default="local", server_default="local")

    groups: Mapped[list[Group]] = relationship(
        secondary=user_groups, back_populates="members", order_by="Group.name"
    )
    #: The directory accounts that sign in as this user (portal/auth/sso/mapping.py).
    identities: Mapped[list[UserIdentity]] = relationship(
        back_populates="user", order_by="UserIdentity.id", cascade="all, delete-orphan",
        passive_deletes=True)

    def set_password(self, password: str | None) -> None:
        """Store a scrypt hash, or no password at all (the account cannot sign in).

        The KDF is Werkzeug's (scrypt, its default cost) unless PASSWORD_HASH_METHOD names
        another: the test suite uses a cheaper scrypt so that hundreds of sign-ins stay fast.
        """
        self.end_sessions()
        if not password:
            self.password_hash = None
            return
        chosen = settings() if has_app_context() else Settings()
        self.password_hash = generate_password_hash(password, method=chosen.password_hash_method)

    def end_sessions(self) -> None:
        """End every session, remember-me token and signed link of this user (password
        change, disable, "sign out everywhere"); committed with the change itself."""
        self.session_gen = (self.session_gen or 0) + 1

    @validates("active")
    def _disabling_ends_sessions(self, _key: str, active: bool) -> bool:
        """Every path that disables an account (the admin pages, ``user sync-ldap``, any
        other) ends its sessions, remember-me tokens and signed links here, for good: they
        carry the old generation, so enabling the account again revives none of them."""
        if not active and self.active is not False:
            self.end_sessions()
        return active

    def set_unusable_password(self) -> None:
        """A hash no password matches (a directory account: the directory checks passwords).
        Unlike set_password, the sessions go on: nothing about the sign-in changed."""
        self.password_hash = UNUSABLE_PASSWORD

    def has_usable_password(self) -> bool:
        """True when some password can sign this account in locally."""
        return bool(self.password_hash) and self.password_hash != UNUSABLE_PASSWORD

    def check_password(self, password: str) -> bool:
        """True when the password matches; an account without a usable password never does."""
        return self.has_usable_password() and check_password_hash(self.password_hash, password)

    #: The group names of the cached snapshot this instance was built from (the user loader,
    #: portal/auth/views.py), used until the groups relationship itself is loaded.
    cached_group_names = None  # or a frozenset of names

    @property
    def group_names(self) -> set[str]:
        if self.cached_group_names is not None and "groups" not in self.__dict__:
            return set(self.cached_group_names)
        return {g.name for g in self.groups}


class Group(db.Model):
    """A class, department or other set of users named in access rules."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(256), default="")

    members: Mapped[list[User]] = relationship(secondary=user_groups, back_populates="groups")


class File(db.Model):
    """A document as students see it: one title, one access rule, many versions."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("title", "category", name="uq_files_title_category"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    category: Mapped[str] = mapped_column(String(64), default="", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    access: Mapped[str] = mapped_column(String(300), default="login")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: An upload not yet published: only those who manage it see it (``access.can_read``);
    #: ``access`` already holds the audience it will have once published.
    draft: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    owner: Mapped[User | None] = relationship()
    versions: Mapped[list[FileVersion]] = relationship(
        back_populates="file", order_by="FileVersion.number", cascade="all, delete-orphan"
    )

    @property
    def latest(self) -> FileVersion | None:
        """The newest version, published or pending: what staff last uploaded. Readers get
        ``current``."""
        return self.versions[-1] if self.versions else None

    @property
    def published_versions(self) -> list[FileVersion]:
        """The versions readers may have, oldest first."""
        return [v for v in self.versions if v.published]

    @property
    def current(self) -> FileVersion | None:
        """The version a download serves by default: the newest published one. Every door
        picks it through here (``cache.snapshot`` for the plan's readers, the zip, the API)."""
        published = self.published_versions
        return published[-1] if published else None

    @property
    def pending_versions(self) -> list[FileVersion]:
        """Versions uploaded and not yet published (only those who manage the file see
        them)."""
        return [v for v in self.versions if not v.published]

    @property
    def pending(self) -> tuple[int, ...]:
        """The numbers of the pending versions (``FileSnapshot.pending`` holds the same)."""
        return tuple(v.number for v in self.pending_versions)

    def version(self, number: int) -> FileVersion | None:
        """The version with this number (published or pending), or None."""
        return next((v for v in self.versions if v.number == number), None)


class FileVersion(db.Model):
    """One immutable content of a file, stored by its SHA-256."""

    __tablename__ = "file_versions"
    __table_args__ = (UniqueConstraint("file_id", "number", name="uq_file_versions_file_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    crc32: Mapped[int] = mapped_column(BigInteger)  # kept for resumable stored-mode zips
    size: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(128))
    original_filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(255))
    uploader_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: False for a new version of a published document until someone publishes it: until
    #: then readers keep the file's ``current`` version (migration 0013).
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    file: Mapped[File] = relationship(back_populates="versions")
    uploader: Mapped[User | None] = relationship()


class DownloadEvent(db.Model):
    """One HTTP response that served (part of) a file version (see portal/analytics).

    ``bytes_sent`` is -1 when the sender cannot know it (nginx sent the file; the worker died
    mid-download: then ``ended_at`` is empty); ``served_ranges`` are the byte ranges the
    response planned to send ("a-b,c-d", inclusive); ``client_ip`` is truncated (IPv4 /24,
    IPv6 /64); ``event_key`` makes writing the same event twice impossible.
    """

    __tablename__ = "download_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("file_versions.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    via_link: Mapped[bool] = mapped_column(Boolean, default=False)
    method: Mapped[str] = mapped_column(String(8), default="GET")
    status: Mapped[int] = mapped_column(Integer)
    range_header: Mapped[str] = mapped_column(String(200), default="")
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(256), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    event_key: Mapped[str | None] = mapped_column(String(32), unique=True)
    served_ranges: Mapped[str] = mapped_column(Text, default="", server_default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    ua_class: Mapped[str] = mapped_column(String(16), default="", server_default="")
    referrer: Mapped[str] = mapped_column(String(256), default="", server_default="")
    served_from: Mapped[str] = mapped_column(String(8), default="origin", server_default="origin")
    link_id: Mapped[str | None] = mapped_column(String(32))


class AuditEntry(db.Model):
    """Who did what security-relevant thing, when: sign-ins, user, access and file changes."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    client_ip: Mapped[str] = mapped_column(String(64), default="")

    actor: Mapped[User | None] = relationship()


class Upload(db.Model):
    """A tus upload: who sends it, how long it is, how much has been acknowledged, what it becomes.

    The state lives here rather than in a side file so that any app node can continue an
    upload (the bytes sit in the shared upload area, see portal/uploads/service.py); a row
    outlives completion so that a client's late HEAD still learns the file it produced.
    """

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex, made by the server
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # Upload-Length
    received: Mapped[int] = mapped_column(BigInteger, default=0)  # acknowledged Upload-Offset
    filename: Mapped[str] = mapped_column(String(255))  # already cleaned for display
    title: Mapped[str] = mapped_column(String(255), default="")
    category: Mapped[str] = mapped_column(String(64), default="")
    access: Mapped[str] = mapped_column(String(300), default="login")
    description: Mapped[str] = mapped_column(Text, default="")
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    raw_metadata: Mapped[str] = mapped_column(Text, default="")  # echoed on HEAD, as tus asks
    #: A new document it creates stays a draft until published (the upload page asks this).
    draft: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Completed even when a document's newest version has the same content already.
    allow_duplicate: Mapped[bool] = mapped_column(Boolean, default=False,
                                                  server_default=false())
    version_id: Mapped[int | None] = mapped_column(
        ForeignKey("file_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    version: Mapped[FileVersion | None] = relationship()


class PortalState(db.Model):
    """One row: who this database is, and how many revoking changes it has committed.

    ``identity`` is made with the schema and names this database's Redis keys (cache/keys.py), so
    a fresh, reset or second database on the same Redis never reads another's entries;
    ``generation`` grows by one in every transaction that changes a file, a user, a group or
    revokes a token, in that same transaction (portal/coherence.py).
    """

    __tablename__ = "portal_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    identity: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class ChangeLog(db.Model):
    """What each generation changed: ``file:<id>``, ``user:<id>``, ``users`` (a group
    changed: every user), ``token:<nonce>`` (a revoked link or session). Workers read the
    rows past the generation they last saw and drop what they hold of those subjects."""

    __tablename__ = "change_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, index=True)
    subject: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class RevokedToken(db.Model):
    """A signed link or a session that was ended before it expired (kept until then)."""

    __tablename__ = "revoked_tokens"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "link" or "session"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SsoSession(db.Model):
    """A CAS sign-in's service ticket and the session it started, so that the server's
    single logout (which names the ticket) can revoke that session; kept until it expires."""

    __tablename__ = "sso_sessions"

    ticket: Mapped[str] = mapped_column(String(256), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class UserIdentity(db.Model):
    """A directory account bound to a portal user: the sign-in method, the provider that
    vouches for it (``issuer``: the OIDC issuer, the CAS server, the LDAP user base) and the
    provider's stable id for the person (``subject``: OIDC ``sub``, the CAS user id, the LDAP
    entry's entryUUID or DN). A sign-in is matched by these three, never by name alone;
    ``name`` is the user id the provider gave at the last sign-in."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("method", "issuer", "subject",
                                       name="uq_user_identities_method_issuer_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(8))  # "ldap", "cas" or "oidc"
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="identities")


class DownloadLimitRule(db.Model):
    """A per-person download limit an admin set on /admin/limits: it takes the place of the
    environment's entry of the same key (PORTAL_DOWNLOAD_LIMITS) unless the environment
    locks that key. ``who`` is a role, ``anonymous`` or ``group:NAME``; a None field is not
    limited. Every change moves the generation (subject ``limits``), so every worker applies
    it within COHERENCE_SECONDS (download/limit_store.py)."""

    __tablename__ = "download_limits"

    who: Mapped[str] = mapped_column(String(80), primary_key=True)
    connections: Mapped[int | None] = mapped_column(Integer)
    rate: Mapped[int | None] = mapped_column(BigInteger)  # bytes per second
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    changed_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))

    changed_by: Mapped[User | None] = relationship()


@event.listens_for(PortalState.__table__, "after_create")
def _seed_state(target, connection, **_kw) -> None:
    """The one state row, with a new identity, whenever the table is created (create_all in
    tests; the migration inserts its own)."""
    connection.execute(target.insert().values(id=1, identity=uuid.uuid4().hex, generation=0))
