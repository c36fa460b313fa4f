#!/usr/bin/env bash
# Installs what cachefs needs on a fresh Debian machine (fusermount; cachefs speaks to
# /dev/fuse itself and mounts with mount(8)), the npm dependencies, and builds dist/.
# Extra Debian packages to install can be named as arguments (e.g. bindfs fio).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount >/dev/null 2>&1 || need+=(fuse)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: run where FUSE is available (a privileged container)" >&2; exit 1; }

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # Exactly the lock file's versions. The lock records the optional prebuilt packages of every
  # platform (lmdb's msgpackr-extract among them): npm 11's `npm ci` refuses a lock without them.
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
