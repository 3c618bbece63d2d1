"""Downloads: a pure HTTP core (http.py) and the thin views that authorise and answer."""

from flask import Blueprint

bp = Blueprint("download", __name__)

from . import views  # noqa: E402,F401
from .zipview import zip_download  # noqa: E402,F401
