#!/bin/sh
# As the official image: before nginx starts, run every /docker-entrypoint.d/*.sh.
set -eu
if [ "$1" = nginx ]; then
  for script in /docker-entrypoint.d/*.sh; do
    [ -e "$script" ] || continue
    echo "$0: running $script"
    sh "$script"
  done
fi
exec "$@"
