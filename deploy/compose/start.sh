#!/usr/bin/env bash
# Start compose.yaml's stack one stage at a time, each once the one before it is healthy:
#   postgres, redis, s3 -> s3-bucket -> migrate -> error-pages (one-shots, must exit 0)
#   -> portal-1, portal-2, flusher -> nginx
# This is the order compose.yaml's depends_on conditions declare. Docker Compose, and podman
# 4.6 or newer with podman-compose 1.1 or newer, follow them with a plain `up -d`; podman 4.3
# (Debian 12) can do neither: podman-compose ignores health conditions before podman 4.6, and
# podman 4.3 cannot start a container whose dependency has dependencies of its own. Running
# it again starts what is stopped and runs the one-shots again (migrate then applies the
# migrations of a new image).
#
# Usage, in the folder of compose.yaml:
#   deploy/compose/start.sh [PODMAN-COMPOSE OPTION...]    e.g. --env-file portal.env
set -euo pipefail

compose=(podman-compose "$@")
deadline_seconds=${START_TIMEOUT:-180}

say() { echo "start.sh: [${SECONDS}s] $*"; }

containers=""  # "NAME SERVICE" lines of the project's containers, as of the last start
container_of() {
  awk -v service="$1" '$2 == service { print $1; exit }' <<<"$containers"
}

start() {
  say "starting $*"
  "${compose[@]}" up -d --no-deps "$@" >/dev/null
  containers=$("${compose[@]}" ps \
    --format '{{.Names}} {{index .Labels "com.docker.compose.service"}}' 2>/dev/null)
}

healthy() {  # wait until each service's health check passes
  local service name deadline
  for service in "$@"; do
    name=$(container_of "$service")
    deadline=$((SECONDS + deadline_seconds))
    until podman healthcheck run "$name" >/dev/null 2>&1; do
      if ((SECONDS > deadline)); then
        say "$service is not healthy after ${deadline_seconds} s:" >&2
        podman logs --tail 30 "$name" >&2 || true
        exit 1
      fi
      sleep 1
    done
    say "$service is healthy"
  done
}

completed() {  # wait until each one-shot service has exited 0
  local service name code
  for service in "$@"; do
    name=$(container_of "$service")
    code=$(timeout "$deadline_seconds" podman wait "$name")
    if [ "$code" != 0 ]; then
      say "$service exited with ${code:-a timeout}:" >&2
      podman logs --tail 30 "$name" >&2 || true
      exit 1
    fi
    say "$service completed"
  done
}

start postgres redis s3
healthy postgres redis s3
start s3-bucket
completed s3-bucket
# one at a time: podman 4.3's DNS server (aardvark-dns 1.4) reloads whenever a container
# joins the network and can drop the queries it is asked meanwhile; migrate, started beside
# error-pages, once lost the name of postgres in the middle of its upgrade
start migrate
completed migrate
start error-pages
completed error-pages
start portal-1 portal-2 flusher
healthy portal-1 portal-2
start nginx
healthy nginx
