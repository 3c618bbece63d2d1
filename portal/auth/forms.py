"""Sign-in form (Flask-WTF: CSRF-protected)."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

MIN_PASSWORD = 8


class LoginForm(FlaskForm):
    """Username and password; lengths capped so overlong input is a form error, not work."""

    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=256)])
    remember = BooleanField(_l("Remember me"))


class PasswordChangeForm(FlaskForm):
    """The current password and a new one, typed twice."""

    current = PasswordField(_l("Current password"), validators=[DataRequired(), Length(max=256)])
    new = PasswordField(_l("New password"),
                        validators=[DataRequired(), Length(min=MIN_PASSWORD, max=256)])
    confirm = PasswordField(
        _l("New password again"),
        validators=[DataRequired(), EqualTo("new", _l("The passwords differ."))])
