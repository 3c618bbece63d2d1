"""Downloads: the plan (plan.py) over a pure HTTP core (http/), and the doors that adapt it."""

from flask import Blueprint

bp = Blueprint("download", __name__)

from . import views  # noqa: E402,F401
from .zipview import zip_download  # noqa: E402,F401
