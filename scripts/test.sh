#!/usr/bin/env bash
# Sets everything up, type-checks the tests and runs the whole test suite (vitest): real FUSE
# mounts, a real S3-protocol server, real processes. Needs root (or FUSE rights) and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh util-linux-extra   # fincore, for the tests of what the cache leaves in the page cache
# The tests are TypeScript that vitest runs without checking types: check them first.
npm run --silent typecheck:test || { echo "test.sh: the tests do not type-check (tsc -p tsconfig.test.json, errors above); not running them" >&2; exit 1; }
exec npx vitest run "$@"
