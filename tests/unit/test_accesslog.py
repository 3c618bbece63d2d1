"""portal.accesslog writes the very line gunicorn's own Logger writes, for any format."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from portal.accesslog import AccessLogger, LazyAtoms

PORTAL_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus "%(a)s"'
FORMATS = [
    PORTAL_FORMAT,
    Config().access_log_format,  # gunicorn's default
    "%(m)s %(U)s ?%(q)s %(H)s %(b)s %(T)s %(M)s %(L)s %(p)s %(l)s %(u)s %(f)s %(t)s",
    "%({x-portal-event}o)s %({User-Agent}i)s %({remote_addr}e)s %({absent}i)s %(z)s",
]


def _request(agent: str | None, referrer: str | None, auth: str | None):
    headers = [("HOST", "portal.test"), ("X-DUP", "first"), ("X-DUP", "second")]
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/files/7/download?v=1",
               "PATH_INFO": "/files/7/download", "QUERY_STRING": "v=1",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.9"}
    if agent is not None:
        headers.append(("USER-AGENT", agent))
        environ["HTTP_USER_AGENT"] = agent
    if referrer is not None:
        environ["HTTP_REFERER"] = referrer
    if auth is not None:
        environ["HTTP_AUTHORIZATION"] = auth
    resp = SimpleNamespace(status="206 Partial Content", sent=1024,
                           headers=[("Content-Type", "application/pdf"),
                                    ("X-Portal-Event", "ev-1")])
    return SimpleNamespace(headers=headers), resp, environ


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("agent,referrer,auth", [
    ('aria2/1.37 "quoted"', "https://hall.example/课程", "Basic dXNlcjpwYXNz"),
    (None, None, None),
])
def test_lines_match_gunicorn(fmt, agent, referrer, auth, monkeypatch):
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", fmt)
    monkeypatch.setattr(Logger, "now", lambda self: "[02/Dec/2026:04:00:00 +0000]")
    theirs, ours = Logger(cfg), AccessLogger(cfg)
    req, resp, environ = _request(agent, referrer, auth)
    elapsed = timedelta(seconds=1, microseconds=2345)
    expected = fmt % theirs.atoms_wrapper_class(theirs.atoms(resp, req, environ, elapsed))
    assert fmt % LazyAtoms(ours, resp, req, environ, elapsed) == expected


def test_access_writes_through_the_access_logger(monkeypatch):
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", PORTAL_FORMAT)
    logger = AccessLogger(cfg)
    lines = []
    monkeypatch.setattr(logger.access_log, "info", lambda fmt, atoms: lines.append(fmt % atoms))
    req, resp, environ = _request("wget/1.21", None, None)
    logger.access(resp, req, environ, timedelta(microseconds=640))
    assert lines == ['10.0.0.9 "GET /files/7/download?v=1 HTTP/1.1" 206 1024 640us "wget/1.21"']


def test_no_line_when_the_access_log_is_off(monkeypatch):
    logger = AccessLogger(Config())  # accesslog unset: gunicorn writes none
    monkeypatch.setattr(logger.access_log, "info", lambda *a: pytest.fail("logged"))
    req, resp, environ = _request(None, None, None)
    logger.access(resp, req, environ, timedelta(0))


def test_cas_tickets_are_redacted_from_the_access_and_error_logs(monkeypatch):
    """The sign-in callback's ``?ticket=ST-...`` reaches neither log, whatever atom shows it
    (the request line, the query, a Referer, an environ field); the line says one came."""
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", PORTAL_FORMAT + ' %(q)s "%(f)s" %({raw_uri}e)s')
    logger = AccessLogger(cfg)
    lines = []
    monkeypatch.setattr(logger.access_log, "info", lambda fmt, atoms: lines.append(fmt % atoms))
    req, resp, environ = _request("Mozilla/5.0", "https://portal.test/x?ticket=ST-3-old", None)
    environ.update(RAW_URI="/login/cas/callback?next=%2F&ticket=ST-1-abc",
                   QUERY_STRING="ticket=ST-1-abc&next=%2F")
    logger.access(resp, req, environ, timedelta(microseconds=640))
    assert lines == ['10.0.0.9 "GET /login/cas/callback?next=%2F&ticket=[redacted] HTTP/1.1" '
                     '206 1024 640us "Mozilla/5.0" ticket=[redacted]&next=%2F '
                     '"https://portal.test/x?ticket=[redacted]" '
                     "/login/cas/callback?next=%2F&ticket=[redacted]"]
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.error_log.addHandler(handler)
    logger.error("Error handling request %s", "/login/cas/callback?ticket=ST-2-def")
    assert records == ["Error handling request /login/cas/callback?ticket=[redacted]"]
    assert "ST-" not in " ".join(lines + records)
