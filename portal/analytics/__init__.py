"""Download analytics: honest counting (logical downloads), rollups, pages and a JSON API.

recorder.py journals and buffers events and flushes them; logical.py holds the pure counting
rules; materialise.py writes events, logical downloads and rollups; queries.py answers
the pages and the API with plain dicts; views.py is the thin HTTP layer; simulate.py makes
synthetic load. docs/analytics.md explains the rules.
"""

from __future__ import annotations

from flask import Flask

from ..settings import DEFAULTS as _ALL

#: ANALYTICS_* settings (PORTAL_ANALYTICS_* in the environment) and their defaults: declared,
#: typed and checked with the others in portal/settings.py.
DEFAULTS = {key: value for key, value in _ALL.items() if key.startswith("ANALYTICS_")}


def init_app(app: Flask) -> None:
    """The recorder, the page and API blueprints, the ``analytics`` commands (the ANALYTICS_
    settings are checked by config.finalize with the others)."""
    from . import models  # noqa: F401  (the tables belong to db.metadata)
    from .cli import analytics_cli
    from .recorder import Recorder
    from .views import also_downloaded, api_bp, pages_bp

    app.extensions["portal_analytics"] = Recorder(app)
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)
    app.cli.add_command(analytics_cli)
    app.add_template_global(also_downloaded, "also_downloaded")
