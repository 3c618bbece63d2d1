"""Sign-in, sign-out, the user loader and role guards."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from . import sso_views, views  # noqa: E402,F401  (register the routes on bp)
