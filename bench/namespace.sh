#!/usr/bin/env bash
# The shared namespace cache (issue 26): MOUNTS mounts (default 8) walk the same tree of
# TOP x SUB directories of FILES files each (default 10 x 10 x 100 = 10,000 files, 111
# directories with the bucket's root) cold, all at once, with `find -type f -printf %s`
# (a readdir of every directory and the attributes of every file). UFS = s3rver on
# 127.0.0.1, which counts the LIST requests it receives. In one run:
#   embedded - MOUNTS --ufs mounts: each lists every directory itself (what cluster
#              mounts did before the shared cache)
#   cluster  - MOUNTS --master mounts (--no-sharing) of one master: its namespace
#              cache lists each directory once for all of them
#   restart  - the master killed with SIGKILL and started again on its meta dir, then
#              MOUNTS new cluster mounts walk the tree: LISTs within --namespace-ttl
# Prints, per phase, LISTs at the store against the directory count (target for the
# cluster: <= 1.1 x directories; 0 after the restart) and the walk time per mount
# (median, min-max, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (mounts)" >&2; exit 1; }
MOUNTS=${MOUNTS:-8}
TOP=${TOP:-10}
SUB=${SUB:-10}
FILES=${FILES:-100}
dirs=$((1 + TOP + TOP * SUB))
files=$((TOP * SUB * FILES))
work=$(mktemp -d /tmp/cachefs-bench-namespace.XXXXXX)
pids=()
mnts=()
trap 'cleanup_bench "${mnts[@]}"' EXIT
node_modules/.bin/tsc -p tsconfig.json
python3 - "$work/tree" "$TOP" "$SUB" "$FILES" <<'PY'
import os, sys
root, top, sub, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for d in range(top):
    for s in range(sub):
        p = os.path.join(root, f"d{d:02}", f"s{s:02}")
        os.makedirs(p)
        for f in range(files):
            with open(os.path.join(p, f"f{f:03}.bin"), "w") as out:
                out.write(f"{d} {s} {f}\n")
PY
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
start_s3 --tree "$work/tree"
(umask 077 && openssl rand -hex 32 > "$work/token")
export CACHEFS_AUTH_TOKEN_FILE="$work/token"
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
master_pid=
start_master() {
  node bin/cachefs master --meta-dir "$work/meta" --host 127.0.0.1 --port "$mport" --namespace-ttl 10m --log-level info >>"$work/master.log" 2>&1 &
  master_pid=$!
  pids+=("$master_pid")
  for _ in $(seq 100); do node bin/cachefs mount-table list --master "127.0.0.1:$mport" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "bench: the master did not start" >&2; return 1
}
start_master
node bin/cachefs mount-table add /bench s3://bench --master "127.0.0.1:$mport" \
  --option "s3.endpoint=http://127.0.0.1:$s3port" --option s3.accessKeyId=S3RVER --option s3.secretAccessKey=S3RVER >/dev/null

# store_lists: LISTs the store received since the last call.
store_lists() {
  local n
  n=$(grep -c REQUESTS "$work/s3.out" || true); kill -USR2 "${pids[0]}"
  for _ in $(seq 50); do [ "$(grep -c REQUESTS "$work/s3.out")" -gt "$n" ] && break; sleep 0.1; done
  grep REQUESTS "$work/s3.out" | tail -1 | cut -d' ' -f2- | python3 -c 'import json,sys; print(json.load(sys.stdin).get("LIST", 0))'
}

# phase NAME SUBDIR MOUNT-ARGS...: mounts MOUNTS mounts, walks them all at once, prints the figures, unmounts.
phase() {
  local name=$1 sub=$2; shift 2
  local i times=() m
  for i in $(seq "$MOUNTS"); do
    m="$work/mnt-$name-$i"; mkdir -p "$m"; mnts+=("$m")
    node bin/cachefs mount "$m" "$@" --cache-dir "$work/cache-$name-$i" --log-level warn
  done
  store_lists >/dev/null
  local walkers=()
  for i in $(seq "$MOUNTS"); do
    ( t0=$(date +%s.%N); n=$(find "$work/mnt-$name-$i/$sub" -type f -printf '%s\n' | wc -l); t1=$(date +%s.%N)
      [ "$n" -eq "$files" ] || { echo "bench: $name mount $i saw $n files, not $files" >&2; exit 1; }
      awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' > "$work/time-$name-$i" ) &
    walkers+=($!)
  done
  for i in "${walkers[@]}"; do wait "$i"; done
  for i in $(seq "$MOUNTS"); do times+=("$(cat "$work/time-$name-$i")"); done
  local lists; lists=$(store_lists)
  printf '%-10s %6s LISTs for %s directories (%s x)   walk per mount %s s (%s)\n' "$name" "$lists" "$dirs" "$(ratio "$lists" "$dirs")" "$(median "${times[@]}")" "$(minmax "${times[@]}")"
  for i in $(seq "$MOUNTS"); do node bin/cachefs umount "$work/mnt-$name-$i"; done
}

printf '\n%s mounts walking %s files in %s directories, cold, at once\n' "$MOUNTS" "$files" "$dirs"
phase embedded . --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port"
phase cluster bench --master "127.0.0.1:$mport" --cache-group bench --no-sharing
kill -9 "$master_pid"; wait "$master_pid" 2>/dev/null || true
start_master
phase restart bench --master "127.0.0.1:$mport" --cache-group bench --no-sharing
curl -s -H "authorization: Bearer $(cat "$work/token")" "http://127.0.0.1:$mport/metrics" | grep -E '^cachefs_master_namespace' | sed 's/^/  master after the restart: /'
