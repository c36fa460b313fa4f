#!/usr/bin/env bash
# Read throughput of the embedded-cache mount, in one run on one 256 MiB file:
#   cold  - through the mount, cache empty, UFS = s3rver on 127.0.0.1
#   warm  - through the mount, blocks cached, page cache dropped
#   cache - the same blocks read directly from the cache directory (the disk's figure)
#   bindfs - a bindfs (C FUSE passthrough) mount of the same data on local disk
# Prints MB/s medians of RUNS runs (default 5), min-max, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
bash scripts/setup.sh bindfs
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-256}
work=$(mktemp -d /tmp/cachefs-bench.XXXXXX)
pids=()
trap 'cleanup_bench "$work/mnt" "$work/bind"' EXIT
mkdir -p "$work/data" "$work/s3" "$work/mnt" "$work/bind" "$work/cache"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/file.bin"
want=$(sha256sum < "$work/data/file.bin" | cut -d' ' -f1)

start_s3 "$work/data/file.bin"
port=$s3port
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

mount_cachefs() {
  node bin/cachefs mount "$work/mnt" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$port" --cache-dir "$work/cache" --log-level warn --foreground &
  pids+=($!)
  wait_mounted "$work/mnt"
}
umount_cachefs() { node bin/cachefs umount "$work/mnt"; sleep 1.2; }

cold=(); warm=(); direct=(); bind=()
for run in $(seq "$RUNS"); do
  rm -rf "$work/cache"; mkdir -p "$work/cache"
  mount_cachefs
  drop_caches; cold+=("$(read_mbps "$work/mnt/file.bin")")
  drop_caches; warm+=("$(read_mbps "$work/mnt/file.bin")")
  got=$(sha256sum < "$work/mnt/file.bin" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench: wrong bytes through the mount" >&2; exit 1; }
  umount_cachefs
  drop_caches; direct+=("$(read_mbps $(find "$work/cache" -path '*/blocks/*' -type f))")
  bindfs "$work/data" "$work/bind"
  drop_caches; bind+=("$(read_mbps "$work/bind/file.bin")")
  fusermount -u "$work/bind"
done

m_cold=$(median "${cold[@]}"); m_warm=$(median "${warm[@]}"); m_direct=$(median "${direct[@]}"); m_bind=$(median "${bind[@]}")
printf '\n%s MiB file, %s runs, MB/s (median, min-max)\n' "$SIZE_MIB" "$RUNS"
printf '%-34s %8s  %s\n' "cold read (UFS = s3rver)" "$m_cold" "$(minmax "${cold[@]}")"
printf '%-34s %8s  %s\n' "warm read (embedded cache)" "$m_warm" "$(minmax "${warm[@]}")"
printf '%-34s %8s  %s\n' "cache dir read directly" "$m_direct" "$(minmax "${direct[@]}")"
printf '%-34s %8s  %s\n' "bindfs of the same data" "$m_bind" "$(minmax "${bind[@]}")"
printf '\nratios: warm/bindfs %s (target >= 0.5)   warm/direct %s   cold/warm %s\n' \
  "$(ratio "$m_warm" "$m_bind")" "$(ratio "$m_warm" "$m_direct")" "$(ratio "$m_cold" "$m_warm")"
