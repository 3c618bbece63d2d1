# Sourced by scripts/run.sh and scripts/test.sh (from the project's folder):
#   install_into_venv WHO [EXTRA]
# makes .venv (with $PYTHON, else python3) and installs the portal into it, editable, with the
# optional extra, saying so first. pip is asked again only when pyproject.toml (or setup.py)
# changed since the last install (.venv/.installed-*): code changes need no install, and pip's
# check of a complete venv cost 5-10 s of every start.

install_into_venv() {
  local who=$1 extra=${2:-} stamp want log
  if [ ! -x .venv/bin/python ]; then
    echo "$who: creating the virtualenv .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
  want=$({ cat pyproject.toml; if [ -e setup.py ]; then cat setup.py; fi; } | sha256sum)
  want=${want%% *}
  stamp=.venv/.installed-${extra:-base}
  # the test extra holds everything the base install does
  for seen in "$stamp" .venv/.installed-test; do
    [ "$(cat "$seen" 2>/dev/null)" = "$want" ] && return 0
  done
  if [ -e "$stamp" ]; then
    echo "$who: pyproject.toml changed since .venv was installed: updating it..."
  elif [ -n "$extra" ]; then
    echo "$who: installing the portal and its test dependencies into .venv" \
         "(first time: about 2 minutes and 1.3 GB, pyspark and playwright are large)..."
  else
    echo "$who: installing the portal and its dependencies into .venv" \
         "(first start: about a minute)..."
  fi
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check \
         -e ".${extra:+[$extra]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "$who: pip could not install the portal into .venv (above)" >&2
    exit 1
  fi
  grep -v '^WARNING: Location' "$log" || true
  rm -f "$log"
  echo "$want" >"$stamp"
}
