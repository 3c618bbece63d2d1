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


@bp.app_template_filter("audit_action")
def audit_action(action: str) -> str | None:
    """An audit action in the page's language (None: shown as its code)."""
    from ..audit import action_words

    return action_words(action)


@bp.app_template_filter("audit_detail")
def audit_detail(entry):
    """An audit entry's detail in the page's language (as stored when it does not parse)."""
    from ..audit_details import detail_words

    return detail_words(entry)


@bp.app_template_filter("audit_target")
def audit_target(entry):
    """An audit entry's target, in words where it is a code (an upload's file, a limit)."""
    from ..audit_details import target_words

    return target_words(entry)


@bp.app_template_filter("access_words")
def access_words(rule: str) -> str:
    """A file's access rule in the page's language (the access picker's words)."""
    from .forms import access_words as words

    return words(rule)


def require_admin() -> None:
    """User and group management is for admins only; staff get 404 like students."""
    if not current_user.is_admin:
        abort(404)


from . import files, views  # noqa: E402,F401
