#!/usr/bin/env bash
# Stop compose.yaml's stack in the reverse of its start order, each stage once the one before
# it has stopped: nginx (no new requests), then the portal nodes and the flusher (running
# downloads finish and their events reach Redis and SQL), then PostgreSQL, Redis and S3.
# podman-compose's own `stop` stops every container at once, so the nodes lose the database
# and Redis while they still write their last events (those then wait in each node's journal
# for its next start) and use up their whole grace period. Docker Compose stops in this order
# itself.
#
# Usage, in the folder of compose.yaml:
#   deploy/compose/stop.sh [PODMAN-COMPOSE OPTION...]    e.g. --env-file portal.env
set -euo pipefail

compose=(podman-compose "$@")
for stage in "nginx" "portal-1 portal-2 flusher" "postgres redis s3"; do
  echo "stop.sh: [${SECONDS}s] stopping $stage"
  # shellcheck disable=SC2086  # a stage is several services
  "${compose[@]}" stop $stage >/dev/null
done
echo "stop.sh: [${SECONDS}s] stopped"
