"""Why an upload was refused, in the service's words: a kind and data, no HTTP.

The views give each kind its status and turn the data into tus headers, in one table
(``views.STATUS``); nothing here knows a status code or a header name.

Messages are English templates marked with ``N_`` (so ``pybabel extract -k N_`` finds them)
with their values kept apart; the view translates the template into the request's language
and fills it in (``views.words``). The service and the header parsers never need a request.
"""

from __future__ import annotations

from enum import Enum


def N_(template: str) -> str:  # (gettext's conventional name for "mark only")
    """Mark a message for extraction without translating it here."""
    return template


class WordedError(Exception):
    """An error whose message is a translatable template and the values that fill it."""

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        super().__init__(template % values if values else template)

    @property
    def message(self) -> str:
        """The message in English."""
        return str(self)


class ErrorKind(Enum):
    """What went wrong with an upload request."""

    BAD_REQUEST = "bad_request"  # metadata or a body this upload cannot take
    NOT_FOUND = "not_found"  # no such upload (any more)
    OFFSET_MISMATCH = "offset_mismatch"  # the client's offset is not the acknowledged one
    GONE = "gone"  # the upload's data or the file it was a version of no longer exists
    TOO_LARGE = "too_large"  # past the size limit, or more bytes than the upload has left
    BUSY = "busy"  # another request is writing to this upload; retry shortly
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the body does not match its checksum
    STORAGE_FULL = "storage_full"  # the disk or quota is full; try again later
    WRITE_FAILED = "write_failed"  # any other failure to write (logged)
    DUPLICATE = "duplicate"  # a document's newest version has this content already


class UploadError(WordedError):
    """A refusal: its kind, a message for the client, and what the client needs to go on:
    ``offset``, the acknowledged offset to resume from, and ``max_size``, the size limit."""

    def __init__(self, kind: ErrorKind, template: str, *, offset: int | None = None,
                 max_size: int | None = None, **values: object) -> None:
        if offset is not None:  # (a template may name the offset to resume from)
            values.setdefault("offset", offset)
        super().__init__(template, **values)
        self.kind = kind
        self.offset = offset
        self.max_size = max_size
