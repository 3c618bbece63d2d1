#!/usr/bin/env bash
# Make this Debian/Ubuntu machine build and run the portal's images with podman, as root:
#   1. the packages: podman (run by runc), mmdebstrap, and what rootful containers on a bridge
#      network need; podman-compose from PyPI in a virtualenv of its own (Debian 12's 1.0.3
#      has no --env-file and ignores depends_on conditions);
#   2. podman's engine settings: runc, cgroupfs, no default ulimits and no pids limit (the
#      default crun cannot set rlimits or cgroups on a host without systemd as PID 1);
#   3. the base image docker.io/library/debian:bookworm-slim: pulled when a registry answers,
#      else made from Debian's own packages (mmdebstrap, about a minute) under that name, so
#      the repository's Containerfile builds unchanged.
# Every step is skipped when already done (a second run takes a second or two). Exits non-zero
# only when a step fails; .ci/run calls it before the tests (tests/functional/test_container_stack.py).
set -euo pipefail

BASE=docker.io/library/debian:bookworm-slim
PACKAGES=(podman runc mmdebstrap uidmap fuse-overlayfs slirp4netns netavark aardvark-dns
          iptables python3-venv)
COMPOSE_VERSION=1.6.0
COMPOSE_HOME=/opt/podman-compose
CONF=/etc/containers/containers.conf

say() { echo "container-setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "run as root (rootful podman is what the stack test uses)" >&2
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 \
    "${missing[@]}" >/dev/null
fi

if [ "$("$COMPOSE_HOME/bin/podman-compose" version 2>/dev/null | sed -n 's/^podman-compose version //p')" \
     != "$COMPOSE_VERSION" ]; then
  say "installing podman-compose $COMPOSE_VERSION into $COMPOSE_HOME"
  python3 -m venv "$COMPOSE_HOME"
  "$COMPOSE_HOME/bin/pip" install -q --disable-pip-version-check \
    "podman-compose==$COMPOSE_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
fi
ln -sf "$COMPOSE_HOME/bin/podman-compose" /usr/local/bin/podman-compose

settings='[containers]
default_ulimits = []
pids_limit = 0
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
[network]
network_backend = "netavark"'
if [ "$(cat "$CONF" 2>/dev/null)" != "$settings" ]; then
  if [ -s "$CONF" ]; then
    cp "$CONF" "$CONF.before-container-setup"
    say "kept the former $CONF as $CONF.before-container-setup"
  fi
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$settings" >"$CONF"
  say "wrote $CONF (runc, cgroupfs, no default ulimits)"
fi

if ! podman image exists "$BASE"; then
  if timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then
    say "pulled $BASE"
  else
    say "no registry serves $BASE: making it from Debian's packages (mmdebstrap)"
    tarball=$(mktemp --suffix=.tar)
    trap 'rm -f "$tarball"' EXIT
    # As the official slim image is made: merged /usr by symlinks (not the usrmerge package,
    # which brings perl), no documentation, manuals or translations now or in later installs.
    slim=()
    for folder in doc man info groff lintian linda locale; do
      slim+=("--dpkgopt=path-exclude=/usr/share/$folder/*")
    done
    mmdebstrap --quiet --variant=minbase \
      --setup-hook=/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh \
      "${slim[@]}" --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      bookworm "$tarball"
    podman import -q "$tarball" "$BASE" >/dev/null
    say "imported $BASE"
  fi
fi
