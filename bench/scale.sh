#!/usr/bin/env bash
# Scale benchmark (issue 30), one run: a directory of N entries in a folder (file://),
# against bindfs on the same folder, and a prefix of S3N objects on the benchmarks' S3
# server; then a worker's block index with BLOCKS block files on disk.
#
# For each of cachefs file://, bindfs and cachefs s3://: time to the first entry of the
# directory (python's scandir, one entry), `ls -f` and `find -type f -printf '%s'` (a stat
# of every entry), each cold (a new mount, the page cache dropped) and warm (again, same
# mount), and, of the serving process of the mount the finds ran on, its peak RSS (VmHWM)
# and the CPU seconds (user+system) it used over its life (a cachefs mount's start is ~1 s).
# The worker: the time a TieredStore takes to open (index its tier dir) and the heap bytes
# per block it then holds (bench/lib/worker-index.mjs).
#
# Usage: bench/scale.sh   (as root; needs bindfs)
#   N=1000000 S3N=200000 BLOCKS=1000000   sizes (these are the defaults)
#   TREE=DIR       use DIR/big as the folder's directory (made once with N entries if missing)
#   BLOCK_DIR=DIR  use DIR as the tier dir (BLOCKS block files made there if missing)
#   META=256MiB    --meta-cache-size of the mounts
#   SYSTEMS="bindfs cachefs s3 worker"   what to measure (all by default)
#   WARM=1         0: no warm repeats (a million-file find takes minutes)
#   STEPS="first ls find"   which figures to take (STEPS=ls ROUNDS=5: paired ls -f rounds in minutes)
#   ROUNDS=1       rounds of the mounts' rows, each round every system in turn (the machine's
#                  load moves: compare within a round)
#   LOGDIR=DIR     where the mounts' logs go (default: the run's work dir, removed at the end)
# Each figure is also logged (stderr, with the load average) as it is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/common.sh

N=${N:-1000000}
S3N=${S3N:-200000}
BLOCKS=${BLOCKS:-1000000}
META=${META:-256MiB}
SYSTEMS=${SYSTEMS:-bindfs cachefs s3 worker}
ROUNDS=${ROUNDS:-1}
WARM=${WARM:-1}
STEPS=${STEPS:-first ls find}
step() { [[ " $STEPS " == *" $1 "* ]]; }
measured() { [[ " $SYSTEMS " == *" $1 "* ]]; }
work=$(mktemp -d /tmp/cachefs-scale.XXXXXX)
LOGDIR=${LOGDIR:-$work}
pids=()
TREE=${TREE:-$work/tree}
BLOCK_DIR=${BLOCK_DIR:-$work/tier}
mkdir -p "$work/m/cachefs" "$work/m/bindfs" "$work/m/s3" "$work/s3tree"
trap 'cleanup_bench "$work/m/cachefs" "$work/m/bindfs" "$work/m/s3"' EXIT
log() { printf '[%s] %s (load %s)\n' "$(date +%T)" "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }

# make_files DIR COUNT: COUNT files f0000000... in DIR, of 0-12 bytes (unless DIR has them).
make_files() {
  python3 - "$1" "$2" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
if len(os.listdir(d)) < n:
    for i in range(n):
        fd = os.open(f'{d}/f{i:07d}', os.O_CREAT | os.O_WRONLY, 0o644)
        if i % 13: os.write(fd, b'x' * (i % 13))
        os.close(fd)
EOF
}

# seconds CMD...: runs CMD (its output dropped), prints the seconds it took.
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'; }
first_entry() { python3 -c 'import os, sys, time; t = time.monotonic(); it = os.scandir(sys.argv[1]); next(it); print(f"{time.monotonic() - t:.3f}")' "$1"; }
count_ls() { local n; n=$(ls -f "$1" | grep -vc '^\.\.\?$'); [ "$n" = "$2" ] || { echo "bench: ls -f saw $n entries in $1, not $2" >&2; exit 1; }; }
count_find() { local n; n=$(find "$1" -type f -printf '%s\n' | wc -l); [ "$n" = "$2" ] || { echo "bench: find saw $n files in $1, not $2" >&2; exit 1; }; }

# mount_fs SYSTEM: a new mount of SYSTEM at $work/m/SYSTEM; sets serving (pid, or empty).
mount_fs() {
  local m="$work/m/$1"
  case $1 in
    cachefs)
      bin/cachefs mount "$m" --ufs "file://$TREE" --cache-dir "$work/cache-f" --meta-cache-size "$META" --pid-file "$work/pid-f" --log-file "$LOGDIR/cachefs-file.log"
      serving=$(serving_pid_of "$work/pid-f") ;;
    s3)
      AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER bin/cachefs mount "$m" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$work/cache-s" --meta-cache-size "$META" --pid-file "$work/pid-s" --log-file "$LOGDIR/cachefs-s3.log"
      serving=$(serving_pid_of "$work/pid-s") ;;
    bindfs)
      bindfs -o ro "$TREE" "$m"; serving=$(pgrep -n -x bindfs) ;;
  esac
  wait_mounted "$m"
}
umount_fs() { local m="$work/m/$1"; umount "$m" 2>/dev/null || umount -l "$m"; for _ in $(seq 100); do mountpoint -q "$m" || break; sleep 0.1; done; sleep 0.5; }

# measure SYSTEM DIR COUNT: one line of figures for DIR (below the mount) holding COUNT files.
measure() {
  local s=$1 dir="$work/m/$1/$2" n=$3 first=- ls_cold=- ls_warm=- find_cold=- find_warm=- rss=- cpu=-
  if step first; then
    mount_fs "$s"; drop_caches
    first=$(first_entry "$dir"); log "$s: first entry $first s"
    umount_fs "$s"
  fi
  if step ls; then
    mount_fs "$s"; drop_caches
    ls_cold=$(seconds count_ls "$dir" "$n"); log "$s: ls -f cold $ls_cold s"
    [ "$WARM" = 0 ] || { ls_warm=$(seconds count_ls "$dir" "$n"); log "$s: ls -f warm $ls_warm s"; }
    umount_fs "$s"
  fi
  if step find; then
    mount_fs "$s"; drop_caches
    find_cold=$(seconds count_find "$dir" "$n"); log "$s: find cold $find_cold s"
    [ "$WARM" = 0 ] || { find_warm=$(seconds count_find "$dir" "$n"); log "$s: find warm $find_warm s"; }
    rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$serving/status")
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$serving/stat")
    umount_fs "$s"
  fi
  printf '%-8s %9s %12s %8s %8s %10s %10s %9s %7s %5s\n' "$s" "$n" "$first" "$ls_cold" "$ls_warm" "$find_cold" "$find_warm" "$rss" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)"
}

npm run build > /dev/null
if measured bindfs || measured cachefs; then
  log "making $N files in $TREE/big (once)"
  make_files "$TREE/big" "$N"
fi
if measured s3; then
  log "making $S3N files for the S3 prefix and starting the S3 server (uploads them)"
  make_files "$work/s3tree/big" "$S3N"
  S3_START_SECONDS=$((300 + S3N / 100)) start_s3 --tree "$work/s3tree"
fi

printf '%-8s %9s %12s %8s %8s %10s %10s %9s %7s %5s\n' system entries first_entry_s ls_cold ls_warm find_cold find_warm rss_MiB cpu_s load
if measured s3; then
  # The S3 server's first listing of the bucket after its uploads is slower by 3-4x than the
  # ones after it (20,000 keys: 3.2 s against 1.0 s by the SDK alone), whatever the page
  # cache holds: its own first pass, not the client's, so it is made before any figure.
  log "listing the S3 prefix once (the server's first pass)"
  mount_fs s3; count_ls "$work/m/s3/big" "$S3N"; umount_fs s3
fi
for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS"
  if measured bindfs; then measure bindfs big "$N"; fi
  if measured cachefs; then measure cachefs big "$N"; fi
  if measured s3; then measure s3 big "$S3N"; fi
done

if measured worker; then
  log "worker index: $BLOCKS block files in $BLOCK_DIR"
  node --expose-gc bench/lib/worker-index.mjs "$BLOCK_DIR" "$BLOCKS"
fi
