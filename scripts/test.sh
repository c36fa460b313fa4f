#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (vitest): real FUSE mounts, a real
# S3-protocol server, real processes. Needs root (or FUSE rights) and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh util-linux-extra   # fincore, for the tests of what the cache leaves in the page cache
exec npx vitest run "$@"
