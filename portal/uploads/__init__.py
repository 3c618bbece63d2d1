"""tus 1.0 resumable uploads for staff and admins under /api/uploads/.

tus.py is the pure header grammar, service.py the upload lifecycle (no request, no
current_user), views.py the thin adapter that authorises and answers.
"""

from flask import Blueprint

bp = Blueprint("uploads", __name__, url_prefix="/api/uploads")

from . import cli, views  # noqa: E402,F401
