"""portal/settings.py: one frozen, typed Settings with every default declared once, refusing a
bad value with one line; the portal's code and gunicorn.conf.py read their values from it."""

from __future__ import annotations

import dataclasses
import os
import re
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from flask import Config

from portal import analytics, config
from portal.settings import KEYS, ConfigError, Settings, environment, from_environ

ROOT = Path(__file__).resolve().parents[2]

#: Keys the portal reads that belong to Flask or an extension (their defaults are theirs),
#: or, for INSTANCE_PATH, to create_app's own argument.
NOT_SETTINGS = {
    "SECRET_KEY_FALLBACKS", "SESSION_COOKIE_NAME", "SQLALCHEMY_DATABASE_URI",
    "SQLALCHEMY_ENGINE_OPTIONS", "PERMANENT_SESSION_LIFETIME", "REMEMBER_COOKIE_DURATION",
    "WTF_CSRF_TIME_LIMIT", "WTF_CSRF_CHECK_DEFAULT", "RATELIMIT_STORAGE_URI",
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", "RATELIMIT_HEADERS_ENABLED", "INSTANCE_PATH",
}

READ = re.compile(r'config(?:\.get|\.setdefault|\.pop)?(?:\[|\()\s*"([A-Z][A-Z0-9_]+)"')
DEFAULTED = re.compile(r'\.get\(\s*"([A-Z][A-Z0-9_]+)"\s*,')


def sources():
    """The portal's Python files and gunicorn.conf.py, as (path from the root, text)."""
    for path in [*sorted((ROOT / "portal").rglob("*.py")), ROOT / "gunicorn.conf.py"]:
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_every_default_table_key_is_a_field_with_that_default():
    specs = Settings.__dataclass_fields__
    for table in (config.DEFAULTS, analytics.DEFAULTS):
        for key, value in table.items():
            assert key.lower() in specs, key
            assert specs[key.lower()].default == value, key
    assert set(config.DEFAULTS) == set(KEYS.values())
    assert set(analytics.DEFAULTS) == {k for k in KEYS.values() if k.startswith("ANALYTICS_")}
    assert "MAX_RANGES" in config.DEFAULTS and "UPLOAD_DIR" in config.DEFAULTS
    assert "PASSWORD_HASH_METHOD" in config.DEFAULTS


def test_every_field_is_typed_and_the_defaults_pass_their_own_rules():
    for spec in dataclasses.fields(Settings):
        assert spec.type, spec.name
        assert callable(spec.metadata["check"]), spec.name
    assert Settings.from_config(config.DEFAULTS) == Settings()


def test_every_key_the_portal_reads_is_a_setting_or_flasks_own():
    read = {key for _, text in sources() for key in READ.findall(text)}
    assert read - set(KEYS.values()) - NOT_SETTINGS == set()


def test_no_call_site_repeats_a_default():
    repeated = [(path, key) for path, text in sources()
                for key in DEFAULTED.findall(text) if key in KEYS.values()]
    assert repeated == []


def test_the_object_is_frozen_and_has_no_dict():
    built = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.per_page = 50
    assert not hasattr(built, "__dict__")  # slots: no attribute can be added either
    assert isinstance(built.languages, tuple)


@pytest.mark.parametrize("key,value,message", [
    # refusals that were there before, word for word
    ("SENDFILE", "carrier-pigeon",
     "PORTAL_SENDFILE must be 'direct' or 'x-accel', not 'carrier-pigeon'"),
    ("S3_PRESIGN_SECONDS", 0,
     "PORTAL_S3_PRESIGN_SECONDS must be a whole number of seconds from 1 to 604800, not 0"),
    ("CACHE_HOT_MEMORY_BYTES", True,
     "PORTAL_CACHE_HOT_MEMORY_BYTES must be a whole number >= 0, not True"),
    ("CACHE_LOCAL_SECONDS", "soon", "PORTAL_CACHE_LOCAL_SECONDS must be a number >= 0, not 'soon'"),
    ("NGINX_GRANT_SECONDS", 1.5,
     "PORTAL_NGINX_GRANT_SECONDS must be a whole number from 0 to 3600, not 1.5"),
    ("FAST_DOWNLOADS", "yes", "PORTAL_FAST_DOWNLOADS must be true or false, not 'yes'"),
    ("TRUSTED_PROXIES", -1, "PORTAL_TRUSTED_PROXIES must be a whole number >= 0 (the proxies "
                            "in front of the portal), not -1"),
    ("COHERENCE_SECONDS", 2, "PORTAL_COHERENCE_SECONDS must be a number above 0 and at most "
                             "1.5, not 2"),
    ("SESSION_COOKIE_SAMESITE", "lax-ish",
     "PORTAL_SESSION_COOKIE_SAMESITE must be Lax, Strict or None, not 'lax-ish'"),
    ("ANALYTICS_FLUSHER", "cron",
     "PORTAL_ANALYTICS_FLUSHER must be 'workers' or 'process', not 'cron'"),
    ("ANALYTICS_NGINX_IMPORT_SHARE", "lots",
     "PORTAL_ANALYTICS_NGINX_IMPORT_SHARE must be a number above 0 and at most 1, not 'lots'"),
    # settings that had no rule before
    ("CACHE_HOT_ENABLED", "off", "PORTAL_CACHE_HOT_ENABLED must be true or false, not 'off'"),
    ("MAX_RANGES", 0, "PORTAL_MAX_RANGES must be a whole number >= 1, not 0"),
    ("PER_PAGE", "20", "PORTAL_PER_PAGE must be a whole number >= 1, not '20'"),
    ("ANALYTICS_TIMEZONE", "Mars/Olympus",
     "PORTAL_ANALYTICS_TIMEZONE must be a time zone such as 'Asia/Shanghai', not 'Mars/Olympus'"),
    ("SESSION_PROTECTION", "paranoid",
     "PORTAL_SESSION_PROTECTION must be 'basic', 'strong' or None, not 'paranoid'"),
    ("LANGUAGES", "en", "PORTAL_LANGUAGES must be a list of text such as "
                        "[\"zh_CN\", \"en\"], not 'en'"),
    ("GUNICORN_WORKERS", 0, "PORTAL_GUNICORN_WORKERS must be a whole number >= 1, not 0"),
    ("PUBLIC_URL", "files.example.edu", "PORTAL_PUBLIC_URL must be an http or https URL of a "
                                        "host such as https://files.example.edu, not "
                                        "'files.example.edu'"),
    ("PUBLIC_URL", "ftp://files.example.edu", "PORTAL_PUBLIC_URL must be an http or https URL "
                                              "of a host such as https://files.example.edu, "
                                              "not 'ftp://files.example.edu'"),
    ("PUBLIC_URL", "https://me:pw@files.example.edu", "PORTAL_PUBLIC_URL must be an http or "
     "https URL of a host such as https://files.example.edu, not "
     "'https://me:pw@files.example.edu'"),
    ("PUBLIC_URL", "https://files.example.edu/?next=/", "PORTAL_PUBLIC_URL must have no query "
                                                        "or fragment, not "
                                                        "'https://files.example.edu/?next=/'"),
    ("PUBLIC_URL", "https://files.example.edu/portal", "PORTAL_PUBLIC_URL must name the root "
     "of its host (the portal is served at /, not under a path such as '/portal'), not "
     "'https://files.example.edu/portal'"),
    ("PUBLIC_URL", "https://files.example.edu\r\nX: y", "PORTAL_PUBLIC_URL must be a URL such "
     "as https://files.example.edu, not 'https://files.example.edu\\r\\nX: y'"),
])
def test_a_bad_value_is_refused_with_one_clear_line(key, value, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_config({key: value})
    assert str(refused.value) == message


def test_the_public_url_is_kept_plain_and_required_with_sign_in_services_in_production():
    assert Settings(public_url="HTTPS://files.example.edu/").public_url == \
        "https://files.example.edu"
    assert Settings(public_url="http://[::1]:8443").public_url == "http://[::1]:8443"
    assert Settings(public_url="").public_url is None
    cas = {"auth_methods": ["local", "cas"], "cas_server_url": "https://cas.example.edu/cas/"}
    oidc = {"auth_methods": ["oidc"], "oidc_issuer": "https://id.example.edu",
            "oidc_client_id": "portal"}
    for methods, shown in ((cas, "'cas'"), (oidc, "'oidc'")):
        with pytest.raises(ConfigError) as refused:
            Settings(env="production", **methods)
        assert str(refused.value).startswith(f"PORTAL_AUTH_METHODS lists {shown}, which needs "
                                             "PORTAL_PUBLIC_URL in production")
        Settings(env="production", public_url="https://files.example.edu", **methods)
        Settings(**methods)  # development: the request's own address, as the demo needs
    Settings(env="production")  # passwords only: nothing is sent back to the portal


def test_a_secret_key_is_never_shown():
    with pytest.raises(ConfigError) as refused:
        Settings(secret_key=123456)
    assert "123456" not in str(refused.value) and "PORTAL_SECRET_KEY" in str(refused.value)
    assert "hunter2" not in repr(Settings(secret_key="hunter2"))


def test_a_none_becomes_what_it_stands_for():
    testing, production = Settings(testing=True), Settings(env="production")
    assert testing.cache_hot_memory_bytes == 0 and testing.cache_local_seconds == 0
    assert testing.analytics_background_flush is False
    assert production.cache_hot_memory_bytes == 64 * 1024**2
    assert production.cache_local_seconds == 5
    assert production.session_cookie_secure is production.remember_cookie_secure is True
    assert Settings(env="production", session_cookie_secure=False).session_cookie_secure is False
    assert Settings().gunicorn_workers == os.cpu_count()
    assert Settings(gunicorn_accesslog="").gunicorn_accesslog is None


def test_the_environment_reads_as_flask_reads_it(monkeypatch):
    env = {"PORTAL_PER_PAGE": "50", "PORTAL_CACHE_HOT_LOCAL": "true", "PORTAL_BIND": "[::]:80",
           "PORTAL_ANALYTICS_NGINX_LOG": "/var/log/nginx/portal_events.log",
           "PORTAL_SESSION_PROTECTION": "null", "PORTAL_LANGUAGES": '["en"]'}
    for name in list(os.environ):
        if name.startswith("PORTAL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    flask = Config(str(ROOT))
    flask.from_prefixed_env("PORTAL")
    assert environment() == dict(flask) == environment(env)
    built = from_environ(env)
    assert (built.per_page, built.cache_hot_local, built.bind) == (50, True, "[::]:80")
    assert built.session_protection is None and built.languages == ("en",)
    with pytest.raises(ConfigError, match=r"^PORTAL_PER_PAGE must be a whole number"):
        from_environ({"PORTAL_PER_PAGE": "many"})


def test_an_apps_settings_follow_its_config(config_app):
    app = config_app
    built = config.settings(app)
    assert built.testing is True and built.secret_key == "test-secret"
    assert app.config["CACHE_HOT_MEMORY_BYTES"] == built.cache_hot_memory_bytes == 0
    app.config["CACHE_HOT_LOCAL"] = True  # a test may still change a running app's settings
    assert config.settings(app).cache_hot_local is True and built.cache_hot_local is False
    app.config.update(CACHE_HOT_MIN_HITS=5)
    assert config.settings(app).cache_hot_min_hits == 5
    with pytest.raises(ConfigError, match="PORTAL_CACHE_HOT_MIN_HITS"):
        app.config["CACHE_HOT_MIN_HITS"] = "lots"
    assert app.config["CACHE_HOT_MIN_HITS"] == config.settings(app).cache_hot_min_hits == 5


@pytest.fixture
def config_app(tmp_path):
    """An app that never connects to anything (the settings are all it is asked for)."""
    from portal import create_app
    from tests.helpers import close_app

    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"),
                      "SECRET_KEY": "test-secret",
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.db'}",
                      "REDIS_URL": "redis://127.0.0.1:1/0", "RATELIMIT_STORAGE_URI": "memory://",
                      "STORAGE_URL": (tmp_path / "storage").as_uri()})
    yield app
    close_app(app)


def gunicorn_conf(monkeypatch, **env) -> dict:
    """gunicorn.conf.py's globals under exactly these PORTAL_ variables."""
    for name in list(os.environ):
        if name.startswith("PORTAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PORTAL_ANALYTICS_FLUSHER", "")  # restored after the test: the file
    monkeypatch.delenv("PORTAL_ANALYTICS_FLUSHER")  # sets it when it is not given
    for name in ("_PORTAL_METRICS_MASTER", "_PORTAL_METRICS_MADE"):  # and these (metrics)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with tempfile.TemporaryDirectory() as metrics:  # the file empties it
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", metrics)
        return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_conf_takes_its_values_from_the_settings(monkeypatch):
    conf = gunicorn_conf(monkeypatch)
    built = from_environ()
    assert (conf["bind"], conf["workers"], built.gunicorn_worker_class) == (
        built.bind, built.gunicorn_workers, "gevent")
    # "gevent" is the portal's own gevent worker (portal/worker.py)
    assert (conf["bind"], conf["workers"], conf["worker_class"]) == (
        "127.0.0.1:5000", os.cpu_count(), "portal.worker.GeventWorker")
    assert (conf["worker_connections"], conf["accesslog"]) == (2000, "-")
    assert conf["control_socket_disable"] is True
    assert built.analytics_flusher == "process" == os.environ["PORTAL_ANALYTICS_FLUSHER"]

    conf = gunicorn_conf(monkeypatch, PORTAL_BIND="0.0.0.0:8080", PORTAL_GUNICORN_WORKERS="3",
                         PORTAL_GUNICORN_WORKER_CLASS="sync", PORTAL_GUNICORN_CONNECTIONS="50",
                         PORTAL_GUNICORN_ACCESSLOG="", PORTAL_ANALYTICS_FLUSHER="workers",
                         PORTAL_ANALYTICS_NGINX_IMPORT="external",
                         PORTAL_GUNICORN_CONTROL_SOCKET="/tmp/portal-test.ctl")
    assert (conf["bind"], conf["workers"], conf["worker_class"]) == ("0.0.0.0:8080", 3, "sync")
    assert (conf["worker_connections"], conf["accesslog"]) == (50, None)
    assert conf["control_socket_disable"] is False
    assert conf["control_socket"] == "/tmp/portal-test.ctl"
    assert conf["_settings"] == from_environ()
    assert conf["_settings"].analytics_flusher == "workers"
    assert "--no-nginx" in conf["_flush_command"]()


def test_gunicorn_conf_refuses_a_bad_value_with_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    proc = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('gunicorn.conf.py')"],
        cwd=ROOT, env={**env, "PORTAL_GUNICORN_WORKERS": "many"}, capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("portal: configuration error: PORTAL_GUNICORN_WORKERS must "
                                   "be a whole number >= 1, not 'many'")
