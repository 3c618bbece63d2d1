"""Staff and admin pages, guarded once in before_request."""

from flask import Blueprint, abort
from flask_login import current_user

from ..extensions import login_manager

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def staff_only():
    """Anonymous: to the login page. Students: 404, as for anything they may not see."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_staff:
        abort(404)
    return None


@bp.app_template_filter("role_label")
def role_label(role: str) -> str:
    """A role as the page's language names it."""
    from .forms import ROLE_LABELS

    label = ROLE_LABELS.get(role)
    return role if label is None else str(label)


def require_admin() -> None:
    """User and group management is for admins only; staff get 404 like students."""
    if not current_user.is_admin:
        abort(404)


from . import files, views  # noqa: E402,F401
