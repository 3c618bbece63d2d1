"""Admin forms (Flask-WTF, CSRF-protected)."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    Optional,
    Regexp,
    ValidationError,
)

from ..access import KINDS, NAME, compose_access, unknown_names
from ..auth.forms import MIN_PASSWORD
from ..extensions import db
from ..models import ROLES

#: How each role is shown (the stored value is the English word).
ROLE_LABELS = {"student": _l("Student"), "staff": _l("Staff"), "admin": _l("Administrator")}

NAME_RULE = Regexp(NAME.pattern, message=_l("Letters, digits, . _ - @ only (at most 64)."))


class UserForm(FlaskForm):
    """Create or edit a user; an empty password on edit keeps the current one."""

    username = StringField(_l("Username"), validators=[DataRequired(), NAME_RULE])
    display_name = StringField(_l("Display name"), validators=[Optional(), Length(max=128)])
    role = SelectField(_l("Role"), choices=[SelectChoice(r, ROLE_LABELS[r]) for r in ROLES])
    groups = StringField(_l("User groups (separated by spaces)"),
                         validators=[Optional(), Length(max=1000)])
    password = PasswordField(_l("Password"),
                             validators=[Optional(), Length(min=MIN_PASSWORD, max=256)])
    active = BooleanField(_l("Active"), default=True)
    confirm_disable = BooleanField(_l("Yes, disable this account: its sessions and download "
                                      "links end now"))

    def validate_groups(self, field) -> None:
        """Only existing groups: creating one is an explicit action on the groups page."""
        from .service import unknown_groups

        missing = unknown_groups(db.session, (field.data or "").split())
        if missing:
            raise ValidationError(_("There is no user group named %(names)s. Create it on "
                                    "the user groups page first.", names=", ".join(missing)))


class ConfirmForm(FlaskForm):
    """A destructive action, confirmed by a ticked box (works without scripts)."""

    confirm = BooleanField(_l("Yes, I understand this cannot be undone here"),
                           validators=[DataRequired(_l("Tick the box to confirm."))])


class GroupForm(FlaskForm):
    """A new group."""

    name = StringField(_l("Name"), validators=[DataRequired(), NAME_RULE])
    description = StringField(_l("Description"), validators=[Optional(), Length(max=256)])


class LimitForm(FlaskForm):
    """One download limit: connections at once and a rate, each empty for no limit.
    ``self.limit`` is the Limit once validated."""

    connections = StringField(_l("Connections at once"))
    rate = StringField(_l("Rate, per second"))

    def validate_connections(self, field) -> None:
        """A whole number from 1 to MAX_CONNECTIONS, or nothing."""
        from ..download.limit_store import MAX_CONNECTIONS

        text = _typed(field)
        if text and not (text.isascii() and text.isdigit() and len(text) <= 6
                         and 1 <= int(text) <= MAX_CONNECTIONS):
            raise ValidationError(_("Connections must be a whole number from 1 to "
                                    "%(most)s, or empty for no limit.", most=MAX_CONNECTIONS))

    def validate_rate(self, field) -> None:
        """Bytes per second as PORTAL_DOWNLOAD_LIMITS takes them (4194304, 512K, 4MB, 1.5M),
        at most MAX_RATE, or nothing."""
        from ..download.limit_store import MAX_RATE
        from ..settings import ConfigError, parse_rate

        text = _typed(field).removesuffix("/s").removesuffix("/S")
        try:
            rate = parse_rate("rate", text) if text and len(text) <= 20 else None
        except ConfigError:
            rate = None
        if text and (rate is None or rate > MAX_RATE):
            raise ValidationError(_("The rate must be bytes per second such as 512K, 4MB or "
                                    "1.5M (K, M and G are powers of 1024), at most 100 GB, "
                                    "or empty for no limit."))

    @property
    def limit(self):
        """The Limit the validated fields spell."""
        from ..settings import Limit, parse_rate

        connections = _typed(self.connections)
        rate = _typed(self.rate).removesuffix("/s").removesuffix("/S")
        return Limit(int(connections) if connections else None,
                     parse_rate("rate", rate) if rate else None)


class LimitResetForm(FlaskForm):
    """Give a download limit back to the environment (its CSRF token only)."""


def _typed(field) -> str:
    """A field's text as typed, full-width digits and letters (a Chinese input method's)
    read as ASCII."""
    import unicodedata

    return unicodedata.normalize("NFKC", field.data or "").strip()


#: The picker's kinds of access, as people read them.
ACCESS_LABELS = {"public": _l("Everyone, without signing in (public)"),
                 "login": _l("Everyone signed in"),
                 "group": _l("Members of a group"),
                 "user": _l("One person (a personal document)")}


def access_words(rule: str) -> str:
    """A stored access rule as people read it (the picker's words for its kind, and the
    groups or the person it names); a rule that does not parse, as stored."""
    from ..access import parse_access

    try:
        kind, names = parse_access(rule)
    except ValueError:
        return rule
    if not names:
        return str(ACCESS_LABELS[kind])
    return _("%(kind)s: %(names)s", kind=ACCESS_LABELS[kind], names=_(", ").join(names))


class AccessPickerForm(FlaskForm):
    """Who may read a file, picked rather than typed: a kind, and the group(s) or the
    person it names, checked to exist. ``self.access`` is the rule once validated."""

    # No default: a request without the picker (a script, a stale form) must not fall back
    # to any audience; it is refused and the rule stays as it was.
    access_kind = SelectField(_l("Who may read it"),
                              choices=[SelectChoice(k, ACCESS_LABELS[k]) for k in KINDS],
                              validators=[InputRequired(_l("Choose who may read it."))])
    access_group = StringField(_l("Group"), validators=[Optional(), Length(max=300)])
    access_user = StringField(_l("Person (username)"), validators=[Optional(), Length(max=64)])

    def validate(self, extra_validators=None) -> bool:
        """The fields, then the rule they spell (syntax, and that its names exist)."""
        if not super().validate(extra_validators):
            return False
        kind = self.access_kind.data
        field = self.access_group if kind == "group" else self.access_user
        stray = [f for f in (self.access_group, self.access_user)
                 if f is not field or kind in ("public", "login")]
        if any((f.data or "").strip() for f in stray):
            self.access_kind.errors.append(
                _("You chose “%(kind)s” but also filled in a group or person for another "
                  "kind of access: clear that field, or choose its kind.",
                  kind=ACCESS_LABELS[kind]))
            return False
        try:
            self.access = compose_access(kind, field.data or "")
        except ValueError:
            field.errors.append(_("Choose a group from the list.") if kind == "group"
                                else _("Choose a person from the list."))
            return False
        missing = unknown_names(db.session, self.access)
        if missing:
            field.errors.append(
                _("There is no group named %(names)s.", names=", ".join(missing))
                if kind == "group" else _("There is no user named %(names)s.",
                                          names=", ".join(missing)))
            return False
        return True

    def show_access(self, rule: str) -> None:
        """Fill the picker from a stored rule."""
        from ..access import picker_parts

        kind, names = picker_parts(rule)
        self.access_kind.data = kind
        (self.access_group if kind == "group" else self.access_user).data = (
            names if kind in ("group", "user") else "")
