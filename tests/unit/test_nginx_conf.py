"""deploy/nginx.conf and the portal agree on what nginx cannot be told per request."""

from __future__ import annotations

import re
from pathlib import Path

from portal.download.fast import GRANT_EXTENSIONS, GRANT_OBJECTS

CONF = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()


def test_grant_types_block_is_the_portals_table():
    # The granted object's location names its media types by extension; the portal puts
    # that extension in the URI, so each type must map to exactly its own extension.
    location = CONF[CONF.index(f"location ~ \"^{GRANT_OBJECTS}/"):]
    start = location.index("types {") + len("types {")
    block = location[start:location.index("}", start)]
    pairs = [line.strip().rstrip(";").split() for line in block.strip().splitlines()]
    assert {mime: ext for mime, ext in pairs} == GRANT_EXTENSIONS
    assert len(set(GRANT_EXTENSIONS.values())) == len(GRANT_EXTENSIONS)
    assert re.search(r"default_type application/octet-stream;", location)


def test_grant_headers_reach_the_client():
    # Every X-Portal-* header the grant sends is read by an auth_request_set, and every
    # variable set that way is used.
    names = set(re.findall(r"\$upstream_http_x_portal_([a-z_]+)", CONF)) - {"event"}
    assert names == {"object", "etag", "last_modified", "accept_ranges", "cache_control",
                     "disposition", "csp", "digest", "grant"}
    for variable in re.findall(r"auth_request_set (\$\w+)", CONF):
        assert CONF.count(variable) >= 2, variable
