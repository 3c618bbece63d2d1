"""Start-up, configuration errors, /healthz and Redis being down."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal import ConfigError, create_app
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_healthz_all_ok(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"database": "ok", "redis": "ok", "storage": "ok", "status": "ok"}


def test_redis_down_is_a_warning_and_downloads_still_work(config, runner, tmp_path):
    config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config["RATELIMIT_STORAGE_URI"] = config["REDIS_URL"]
    app = create_app(config)
    from portal.extensions import db

    with app.app_context():
        db.create_all()
    (tmp_path / "timetable.txt").write_text("周一 数据结构")
    result = app.test_cli_runner().invoke(
        args=["file", "add", str(tmp_path / "timetable.txt"), "--access", "public"])
    assert result.exit_code == 0, result.output
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json["status"] == "degraded" and health.json["redis"] == "degraded"
    assert health.json["reasons"]["redis"].startswith("unavailable")  # the test client: loopback
    resp = client.get("/files/1/download")
    assert resp.status_code == 200 and resp.get_data(as_text=True) == "周一 数据结构"
    with app.app_context():
        db.engine.dispose()


def test_factory_writes_nothing(config, tmp_path):
    app = create_app(config)
    with app.app_context():
        from sqlalchemy import inspect

        from portal.extensions import db

        assert inspect(db.engine).get_table_names() == []
        db.engine.dispose()


@pytest.mark.parametrize("key,value,message", [
    ("DATABASE_URL", "mysql+nosuchdriver://x/y", "PORTAL_DATABASE_URL"),
    ("DATABASE_URL", "not a url", "PORTAL_DATABASE_URL"),
    ("SENDFILE", "carrier-pigeon", "PORTAL_SENDFILE"),
    ("STORAGE_URL", "ftp://host/x", "PORTAL_STORAGE_URL"),
    ("CACHE_LOCAL_SECONDS", -1, "PORTAL_CACHE_LOCAL_SECONDS"),
    ("CACHE_LOCAL_SECONDS", "soon", "PORTAL_CACHE_LOCAL_SECONDS"),
    ("FAST_DOWNLOADS", "yes", "PORTAL_FAST_DOWNLOADS"),
    ("NGINX_GRANT_SECONDS", -1, "PORTAL_NGINX_GRANT_SECONDS"),
    ("NGINX_GRANT_SECONDS", 1.5, "PORTAL_NGINX_GRANT_SECONDS"),
    ("CACHE_HOT_MEMORY_BYTES", 1.5, "PORTAL_CACHE_HOT_MEMORY_BYTES"),
    ("CACHE_HOT_MEMORY_BYTES", True, "PORTAL_CACHE_HOT_MEMORY_BYTES"),
    ("S3_DELIVERY", "teleport", "PORTAL_S3_DELIVERY must be"),
    ("S3_PRESIGN_SECONDS", 0, "PORTAL_S3_PRESIGN_SECONDS"),
    ("S3_PRESIGN_SECONDS", 8 * 24 * 3600, "PORTAL_S3_PRESIGN_SECONDS"),
    ("S3_PRESIGN_SECONDS", "300", "PORTAL_S3_PRESIGN_SECONDS"),
    ("S3_PRESIGN_SECONDS", True, "PORTAL_S3_PRESIGN_SECONDS"),
    ("TRUSTED_PROXIES", -1, "PORTAL_TRUSTED_PROXIES"),
    ("TRUSTED_PROXIES", 1.5, "PORTAL_TRUSTED_PROXIES"),
    ("TRUSTED_PROXIES", "nginx", "PORTAL_TRUSTED_PROXIES"),
    ("TRUSTED_PROXIES", True, "PORTAL_TRUSTED_PROXIES"),
    ("LOGIN_LIMIT_ACCOUNT", "lots", "PORTAL_LOGIN_LIMIT_ACCOUNT"),
    ("LOGIN_LIMIT_IP", 100, "PORTAL_LOGIN_LIMIT_IP"),
    ("LOGIN_LIMIT_ACCOUNT_CEILING", "0 per hour", "PORTAL_LOGIN_LIMIT_ACCOUNT_CEILING"),
])
def test_config_errors(config, key, value, message):
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        create_app(config)


def test_unwritable_storage_stops_startup(config, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the storage folder should be")
    config["STORAGE_URL"] = (blocker / "storage").as_uri()
    with pytest.raises(ConfigError, match="PORTAL_STORAGE_URL"):
        create_app(config)


def test_production_requires_secret_key(config):
    config["ENV"] = "production"
    config["SECRET_KEY"] = None
    with pytest.raises(ConfigError, match="PORTAL_SECRET_KEY"):
        create_app(config)


def test_cli_config_error_is_one_clear_line(tmp_path):
    env = dict(os.environ, PORTAL_DATABASE_URL="oracle://nope", PORTAL_INSTANCE_PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("portal: configuration error: PORTAL_DATABASE_URL")


def test_app_py_and_wsgi_share_the_app(tmp_path):
    env = dict(os.environ, PORTAL_INSTANCE_PATH=str(tmp_path))
    code = "import app, wsgi; print(app.app is wsgi.app)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr
    assert (tmp_path / "secret_key").exists()  # the embedded default keeps a random key
