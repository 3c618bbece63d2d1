"""Sans-IO HTTP semantics for serving a stored file representation.

This package decides *what* a download response must look like -- status,
selected byte ranges and the representation headers -- from the request
method, the request header fields and a description of the stored file.  It
never touches sockets, files or Flask, so it can be tested exhaustively and
reused by any front end.

Normative references:

* RFC 9110 §8.8 (validators), §13 (conditional requests), §14 (range
  requests), §15.3.7 / §15.5.17 (206 / 416).
* RFC 2046 §5.1.1 and RFC 9110 §14.6 (multipart/byteranges).
* RFC 6266 + RFC 8187 (Content-Disposition with a UTF-8 filename).
* RFC 9530 (Repr-Digest).

Policy choices that RFC 9110 leaves to the server are documented next to the
code that implements them (search for "Policy").

One module a concern, every public name re-exported here (callers import from
the package, never from a module):

* ``model``: the tunables (Policy) and ``Representation`` / ``Decision``;
* ``fields``: header field access, HTTP-date, entity tags;
* ``ranges``: the Range field (``select_ranges`` and friends);
* ``decision``: ``evaluate``, the decision procedure;
* ``multipart``: multipart/byteranges;
* ``disposition``: Content-Disposition;
* ``content``: content-type safety, digests, validators.
"""

from __future__ import annotations

from .content import is_active_content, repr_digest, strong_etag
from .decision import evaluate
from .disposition import content_disposition
from .fields import field, parse_http_date
from .model import COALESCE_GAP as COALESCE_GAP
from .model import MAX_OUT_OF_ORDER as MAX_OUT_OF_ORDER
from .model import MAX_OVERLAPPING_SPECS as MAX_OVERLAPPING_SPECS
from .model import MAX_RANGE_HEADER_LENGTH, Decision, Representation
from .model import OVERLAP_SLACK as OVERLAP_SLACK
from .multipart import MultipartPlan, RangeReadError, iter_multipart, multipart_plan, new_boundary
from .ranges import (
    RangeOutcome,
    RangeSelection,
    is_plain_byte_range,
    is_single_byte_range,
    select_ranges,
)

__all__ = [
    "MAX_RANGE_HEADER_LENGTH",
    "Decision",
    "MultipartPlan",
    "RangeOutcome",
    "RangeReadError",
    "RangeSelection",
    "Representation",
    "content_disposition",
    "evaluate",
    "field",
    "is_active_content",
    "is_plain_byte_range",
    "is_single_byte_range",
    "iter_multipart",
    "multipart_plan",
    "new_boundary",
    "parse_http_date",
    "repr_digest",
    "select_ranges",
    "strong_etag",
]
