"""Times as people read them: in the portal's time zone (PORTAL_ANALYTICS_TIMEZONE, the zone
the analytics count days in), so a download shows on the same day on every page."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_time(value: datetime | None, zone: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``value`` (aware, or naive UTC as the database hands it back) in ``zone``; "" for
    None."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(_zone(zone)).strftime(fmt)
