#!/usr/bin/env bash
# Sets everything up and runs the main job on the embedded default: generates a
# sample dataset, mounts it through cachefs with the in-process block cache, reads it
# cold (from the source) and warm (from the cache), checks every byte, and unmounts.
# Usage: bash scripts/demo.sh [UFS-URI]   (default: a generated folder, file://...)
set -euo pipefail
cd "$(dirname "$0")/.."
uri=${1:-}
set --   # sourced below: setup.sh takes its arguments as Debian packages to install
. scripts/setup.sh
cachefs="$PWD/bin/cachefs"
work=${CACHEFS_DEMO_DIR:-/tmp/cachefs-demo}
mnt="$work/mnt"
mkdir -p "$work/data" "$mnt" "$work/cache"

if [ -z "$uri" ]; then
  uri="file://$work/data"
  if [ ! -f "$work/.data-complete" ]; then
    echo "== generating a sample dataset in $work/data (256 MiB in 2 directories)"
    mkdir -p "$work/data/train" "$work/data/val"
    for i in $(seq -w 0 13); do head -c 16777216 /dev/urandom > "$work/data/train/part-$i.bin"; done
    for i in 0 1; do head -c 16777216 /dev/urandom > "$work/data/val/part-$i.bin"; done
    printf 'file,label\npart-00.bin,cat\npart-01.bin,dog\n' > "$work/data/train/labels.csv"
    touch "$work/.data-complete"
  fi
fi

cleanup() { "$cachefs" umount "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
metrics_port=${CACHEFS_DEMO_METRICS_PORT:-19199}
echo "== cachefs mount $mnt --ufs $uri"
"$cachefs" mount "$mnt" --ufs "$uri" --cache-dir "$work/cache" --metrics-port "$metrics_port" --metrics-host 127.0.0.1
ls -lR "$mnt" | head -20

drop() { sync; [ "$(id -u)" -eq 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
read_all() { local t0 t1; t0=$(date +%s.%N); find "$mnt" -type f -exec cat {} + > /dev/null; t1=$(date +%s.%N); echo "$t0 $t1"; }
bytes=$(find "$mnt" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
drop; read -r a b < <(read_all); echo "== first read:  $(awk -v n="$bytes" -v a="$a" -v b="$b" 'BEGIN{printf "%.0f MB/s", n/(b-a)/1e6}')"
drop; read -r a b < <(read_all); echo "== second read: $(awk -v n="$bytes" -v a="$a" -v b="$b" 'BEGIN{printf "%.0f MB/s (served from the block cache)", n/(b-a)/1e6}')"

if [[ "$uri" == file://* ]]; then
  echo "== checking every byte against the source"
  (cd "${uri#file://}" && find . -type f -exec sha256sum {} + | sort -k2) > "$work/want.sha256"
  (cd "$mnt" && find . -type f -exec sha256sum {} + | sort -k2) > "$work/got.sha256"
  if diff "$work/want.sha256" "$work/got.sha256"; then echo "all $(wc -l < "$work/got.sha256") files identical"; else echo "demo: bytes differ" >&2; exit 1; fi
fi
echo "== metrics (http://127.0.0.1:$metrics_port/metrics)"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^cachefs_(client_read_bytes_total|cache_hits_total|cache_misses_total|ufs_read_bytes_total)' || true
echo "== cachefs umount $mnt"
"$cachefs" umount "$mnt"
trap - EXIT
