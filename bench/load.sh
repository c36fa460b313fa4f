#!/usr/bin/env bash
# cachefs load against the object store's own ceiling, in one run (UFS = s3rver on
# 127.0.0.1, one worker of cache group `bench`, see lib/cluster-env.sh):
#   big    - BIG_COUNT objects of 4 MiB (default 256: 1 GiB)
#   small  - SMALL_COUNT objects of 128 KiB (default 10000)
# For each: the ceiling (every object GET straight from one S3 client with no cache,
# THREADS at a time: lib/s3-ceiling.mjs), then `cachefs load` of it (THREADS per worker),
# timed wall clock from the command's start to its end, and its fill phase as it reports
# it; ratios to the ceiling (target >= 0.8).
# Then a reader of 4 processes, each reading a shuffled quarter of the small objects
# through a --no-sharing cluster mount: its first epoch after the load against its second
# (page cache dropped before each; target >= 0.9).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
bash scripts/setup.sh
BIG_COUNT=${BIG_COUNT:-256}
SMALL_COUNT=${SMALL_COUNT:-10000}
THREADS=${THREADS:-64}
work=$(mktemp -d /tmp/cachefs-bench-load.XXXXXX)
pids=()
trap 'cleanup_bench "$work/mnt"' EXIT
mkdir -p "$work/data/big" "$work/data/small" "$work/mnt"
head -c $((BIG_COUNT * 4 * 1024 * 1024)) /dev/urandom | split -b 4MiB -a 5 -d - "$work/data/big/o"
head -c $((SMALL_COUNT * 128 * 1024)) /dev/urandom | split -b 128KiB -a 6 -d - "$work/data/small/o"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
start_bench_cluster --tree "$work/data"
rm -rf "$work/data" # uploaded; the store holds its own copy

# load_mbps NAME: loads /bench/NAME into the cache group; prints wall-clock MB/s.
load_mbps() {
  local t0 t1 out bytes
  t0=$(date +%s.%N)
  out=$(node bin/cachefs load "/bench/$1" --master "127.0.0.1:$mport" --cache-group bench --threads "$THREADS" --json)
  t1=$(date +%s.%N)
  echo "$out" | tail -1 >> "$work/load.log"
  bytes=$(echo "$out" | tail -1 | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failedBlocks"] == 0, d; print(d["bytes"])')
  fill=$(echo "$out" | tail -1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mbPerSec"]))')
  awk -v n="$bytes" -v a="$t0" -v b="$t1" -v f="$fill" 'BEGIN { printf "%.0f %s\n", n / (b - a) / 1e6, f }'
}
ceiling_mbps() { node bench/lib/s3-ceiling.mjs "http://127.0.0.1:$s3port" bench "$1/" "$THREADS" | awk '/CEILING/ {printf "%.0f\n", $2}'; }

c_big=$(ceiling_mbps big); read -r l_big f_big < <(load_mbps big)
c_small=$(ceiling_mbps small); read -r l_small f_small < <(load_mbps small)
again=$(node bin/cachefs load /bench/small --master "127.0.0.1:$mport" --cache-group bench --json | tail -1)

node bin/cachefs mount "$work/mnt" --master "127.0.0.1:$mport" --cache-group bench --no-sharing --short-circuit off --cache-dir "$work/mcache" --log-level warn
# epoch DIR: 4 processes, each reading a shuffled quarter of DIR's files; prints MB/s.
epoch() {
  local t0 t1 bytes
  find "$1" -type f | shuf > "$work/list"
  split -n r/4 "$work/list" "$work/part."
  bytes=$(du -sb --apparent-size "$1" | cut -f1)
  drop_caches
  t0=$(date +%s.%N)
  for p in "$work"/part.*; do xargs -a "$p" -d '\n' cat > /dev/null & done
  wait
  t1=$(date +%s.%N)
  rm -f "$work"/part.*
  awk -v n="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) / 1e6 }'
}
e1=$(epoch "$work/mnt/bench/small"); e2=$(epoch "$work/mnt/bench/small")
node bin/cachefs umount "$work/mnt"

printf '\nload, %s fetches in flight per worker, MB/s: wall clock from the command start (walk and\n' "$THREADS"
printf 'process start included), and the fill phase as load reports it\n'
printf '%-36s %8s %8s %6s %8s %6s\n' "dataset" "ceiling" "load" "ratio" "fill" "ratio"
printf '%-36s %8s %8s %6s %8s %6s\n' "big: $BIG_COUNT x 4 MiB" "$c_big" "$l_big" "$(ratio "$l_big" "$c_big")" "$f_big" "$(ratio "$f_big" "$c_big")"
printf '%-36s %8s %8s %6s %8s %6s\n' "small: $SMALL_COUNT x 128 KiB" "$c_small" "$l_small" "$(ratio "$l_small" "$c_small")" "$f_small" "$(ratio "$f_small" "$c_small")"
printf '(target >= 0.8)\nsecond load of small: %s\n' "$again"
printf '\nshuffled reader, 4 processes, small: epoch 1 after load %s MB/s, epoch 2 %s MB/s, ratio %s (target >= 0.9)\n' "$e1" "$e2" "$(ratio "$e1" "$e2")"
