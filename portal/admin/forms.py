"""Admin forms (Flask-WTF, CSRF-protected)."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional, Regexp

from ..access import NAME
from ..auth.forms import MIN_PASSWORD
from ..models import ROLES

#: How each role is shown (the stored value is the English word).
ROLE_LABELS = {"student": _l("Student"), "staff": _l("Staff"), "admin": _l("Administrator")}

NAME_RULE = Regexp(NAME.pattern, message=_l("Letters, digits, . _ - @ only (at most 64)."))


class UserForm(FlaskForm):
    """Create or edit a user; an empty password on edit keeps the current one."""

    username = StringField(_l("Username"), validators=[DataRequired(), NAME_RULE])
    display_name = StringField(_l("Display name"), validators=[Optional(), Length(max=128)])
    role = SelectField(_l("Role"), choices=[SelectChoice(r, ROLE_LABELS[r]) for r in ROLES])
    groups = StringField(_l("Groups (separated by spaces)"),
                         validators=[Optional(), Length(max=1000)])
    password = PasswordField(_l("Password"),
                             validators=[Optional(), Length(min=MIN_PASSWORD, max=256)])
    active = BooleanField(_l("Active"), default=True)


class GroupForm(FlaskForm):
    """A new group."""

    name = StringField(_l("Name"), validators=[DataRequired(), NAME_RULE])
    description = StringField(_l("Description"), validators=[Optional(), Length(max=256)])
