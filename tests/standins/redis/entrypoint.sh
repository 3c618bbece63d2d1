#!/bin/sh
# As the official image: redis-server without a configuration file answers on every
# interface of the container (no protected mode).
set -eu
if [ "$1" = redis-server ]; then
  set -- "$@" --protected-mode no
fi
exec "$@"
