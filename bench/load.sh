#!/usr/bin/env bash
# cachefs load against the object store's own ceiling, in one run (UFS = s3rver on
# 127.0.0.1, one worker of cache group `bench`, see lib/cluster-env.sh):
#   big    - BIG_COUNT objects of 4 MiB (default 256: 1 GiB)
#   small  - SMALL_COUNT objects of 128 KiB (default 10000)
# For each, ROUNDS times (default 2; the dataset is evicted between rounds): the ceiling
# (every object GET straight from one S3 client with no cache, THREADS at a time:
# lib/s3-ceiling.mjs), then `cachefs load` of it (THREADS per worker), each command timed
# from its start to its end (target >= 0.8), and the ceiling client's GET phase against
# the load's fill phase as it reports it; the medians over the rounds. The CPU seconds the S3 server, the
# ceiling client, the worker and the load command spent in each phase are printed too:
# on a machine of two cores the S3 server and its client share them, so the ceiling is
# set by how much CPU the client spends per object.
# Then, ROUNDS times after a round that is not counted: the small dataset evicted and
# loaded again, and a reader of 4 processes, each reading a shuffled quarter of it through
# a --no-sharing cluster mount: its first epoch after the load against its second (page
# cache dropped before each; target >= 0.9), the median of the rounds' ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
bash scripts/setup.sh
BIG_COUNT=${BIG_COUNT:-256}
SMALL_COUNT=${SMALL_COUNT:-10000}
THREADS=${THREADS:-64}
ROUNDS=${ROUNDS:-2}
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

s3_pid=${pids[0]}
# cpu PID: CPU seconds (user + system) the process has spent so far.
cpu() { awk '{ printf "%.2f\n", ($14 + $15) / 100 }' "/proc/$1/stat"; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
cachefs_load() { node bin/cachefs load "/bench/$1" --master "127.0.0.1:$mport" --cache-group bench "${@:2}"; }

# round NAME: the ceiling then a load of /bench/NAME, then evicts it; appends
# "ceiling load fill cpu-s3-ceiling cpu-client cpu-s3-load cpu-worker cpu-cli ceiling-wall" to
# $work/NAME.rounds: ceiling is the client's GET phase, ceiling-wall its command from start to end.
round() {
  local s0 s1 w0 w1 t0 t1 out bytes fill c cc cw lc
  s0=$(cpu "$s3_pid")
  t0=$(date +%s.%N)
  read -r c cc cw < <(/usr/bin/time -f 'TIME %U %S' node bench/lib/s3-ceiling.mjs "http://127.0.0.1:$s3port" bench "$1/" "$THREADS" 2>&1 |
    awk '/CEILING/ { m = $2; n = $3 } /^TIME/ { t = $2 + $3 } END { printf "%.0f %.1f %s\n", m, t, n }')
  t1=$(date +%s.%N)
  cw=$(awk -v n="$cw" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) / 1e6 }')
  s1=$(cpu "$s3_pid"); local s3c; s3c=$(since "$s0" "$s1")
  s0=$(cpu "$s3_pid"); w0=$(cpu "$worker_pid")
  t0=$(date +%s.%N)
  out=$( { /usr/bin/time -f 'TIME %U %S' node bin/cachefs load "/bench/$1" --master "127.0.0.1:$mport" --cache-group bench --threads "$THREADS" --json; } 2>&1)
  t1=$(date +%s.%N)
  s1=$(cpu "$s3_pid"); w1=$(cpu "$worker_pid")
  lc=$(echo "$out" | awk '/^TIME/ { printf "%.1f\n", $2 + $3 }')
  out=$(echo "$out" | grep '^{' | tail -1)
  echo "$out" >> "$work/load.log"
  bytes=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failedBlocks"] == 0, d; print(d["bytes"])')
  fill=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mbPerSec"]))')
  echo "$c $(awk -v n="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) / 1e6 }') $fill $s3c $cc $(since "$s0" "$s1") $(since "$w0" "$w1") $lc $cw" >> "$work/$1.rounds"
  cachefs_load "$1" --evict --json > /dev/null
}

for _ in $(seq "$ROUNDS"); do round big; round small; done
cachefs_load small --threads "$THREADS" --json > /dev/null
again=$(cachefs_load small --json | tail -1)

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
# Round 0 is not counted: it is the worker's first read of blocks since it started, which
# pays for compiling its read path (epoch 1 of 2,000 blocks took the worker 3.5-3.7 s of
# CPU against 2.4 s for epoch 2 at first, 2.5 against 2.1 after a reload).
for r in $(seq 0 "$ROUNDS"); do
  if [ "$r" -gt 0 ]; then
    cachefs_load small --evict --json > /dev/null
    cachefs_load small --threads "$THREADS" --json > /dev/null
  fi
  e1=$(epoch "$work/mnt/bench/small"); e2=$(epoch "$work/mnt/bench/small")
  [ "$r" -gt 0 ] && echo "$e1 $e2 $(ratio "$e1" "$e2")" >> "$work/epochs"
done
node bin/cachefs umount "$work/mnt"

# summary NAME LABEL: one line of medians for the rounds of NAME.
summary() {
  local f="$work/$1.rounds" c l fl
  c=$(cut -d' ' -f1 "$f" | median); l=$(cut -d' ' -f2 "$f" | median); fl=$(cut -d' ' -f3 "$f" | median); cw=$(cut -d' ' -f9 "$f" | median)
  printf '%-30s %8s %8s %6s %8s %8s %6s   %s\n' "$2" "$cw" "$l" "$(awk '{ print $2 / $9 }' "$f" | median | xargs printf '%.2f')" "$c" "$fl" "$(awk '{ print $3 / $1 }' "$f" | median | xargs printf '%.2f')" \
    "$(awk '{ printf "%s/%s | %s/%s/%s  ", $4, $5, $6, $7, $8 }' "$f")"
}
printf '\nload, %s fetches in flight per worker, MB/s, median of %s rounds: each command timed from its\n' "$THREADS" "$ROUNDS"
printf 'start to its end (process start, listing or walk included), then the GET phase of the\n'
printf 'ceiling client against the fill phase as load reports it.\n'
printf 'CPU seconds per round: S3 server/ceiling client during the ceiling | S3 server/worker/load command during the load\n'
printf '%-30s %8s %8s %6s %8s %8s %6s   %s\n' "dataset" "ceiling" "load" "ratio" "GETs" "fill" "ratio" "cpu"
summary big "big: $BIG_COUNT x 4 MiB"
summary small "small: $SMALL_COUNT x 128 KiB"
printf '(target >= 0.8)\nsecond load of small: %s\n' "$again"
printf '\nshuffled reader, 4 processes, small, MB/s per round (epoch 1 after load, epoch 2, ratio): %s\n' "$(tr '\n' ';' < "$work/epochs")"
printf 'median ratio %s (target >= 0.9)\n' "$(cut -d' ' -f3 "$work/epochs" | median)"
