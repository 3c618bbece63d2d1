"""What never reaches a log line: CAS tickets in a URL.

CAS sends the browser back to ``/login/cas/callback?next=...&ticket=ST-...``. The access
log's request line (and its query atom), a Referer, gunicorn's error log, or an error that
names CAS's validation URL would otherwise keep the ticket, where anyone who reads the logs
could name it in a single-logout request (ending that person's session) or try it before
the portal does. The ticket's value is replaced, its name kept, so a line still says a
ticket came.
"""

from __future__ import annotations

import logging
import re

#: A ``ticket`` parameter in a URL or a query string, plain or percent-encoded once.
_TICKET = re.compile(r"((?:^|[?&;]|%3[Ff]|%26)ticket(?:=|%3[Dd]))[^&;#\s\"']*")
REDACTED = "[redacted]"


def redact_tickets(text: str) -> str:
    """``text`` with the value of every ``ticket`` URL parameter replaced by [redacted]."""
    if "ticket" not in text:  # nearly every line: one substring test
        return text
    return _TICKET.sub(rf"\g<1>{REDACTED}", text)


class RedactTickets(logging.Filter):
    """A logging filter that redacts tickets from a record's message (gunicorn's error log:
    "Error handling request /login/cas/callback?...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; rewrite its message when it names a ticket."""
        message = record.getMessage()
        if "ticket" in message:
            record.msg, record.args = redact_tickets(message), None
        return True
