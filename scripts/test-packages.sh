#!/usr/bin/env bash
# Install the system packages of scripts/test-packages.txt that this machine lacks: with
# apt-get, as root or through passwordless sudo. Otherwise (or without apt-get) say which are
# missing and the one command that installs them, and go on: the tests that need them are then
# skipped, each with its reason (under CI=true they fail instead). Exits non-zero only when
# the list cannot be read. An argument names another list of the same form, - for standard
# input (the tests of this script use one).
set -uo pipefail
cd "$(dirname "$0")/.."
list=${1:-scripts/test-packages.txt}
if [ "$list" = - ]; then exec 3<&0; else exec 3<"$list" || exit 1; fi

missing=()
while read -r program package _ <&3; do
  case "$program" in ''|'#'*) continue ;; esac
  if [[ $program == /* ]]; then
    [ -e "$program" ] && continue
  elif PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$program" >/dev/null 2>&1; then
    continue
  fi
  [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

install="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo)
else
  echo "test-packages: missing ${missing[*]}; their tests will be skipped. To install them:"
  echo "  sudo sh -c '$install'"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test-packages: missing ${missing[*]} (Debian/Ubuntu package names), and there is no"
  echo "apt-get here to install them: install them with this system's package manager."
  exit 0
fi
echo "test-packages: installing ${missing[*]} with apt-get (a few minutes the first time)..."
if ! { "${as_root[@]}" apt-get update -qq &&
       "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null; }; then
  echo "test-packages: apt-get could not install them; the tests that need them will say so."
  echo "  By hand: sudo sh -c '$install'"
fi
exit 0
