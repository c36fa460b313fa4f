#!/usr/bin/env bash
# What a FUSE read costs before cachefs does anything, in one run, on one file held in
# memory (no disk anywhere; page cache dropped before every read):
#   memory-fs - cachefs's own FUSE session and ops over a filesystem whose read is one
#               copy from a Buffer (bench/lib/memory-fs.mjs): what the FUSE layer costs
#   cachefs   - the embedded-cache mount, blocks cached, its cache dir on tmpfs
#   bindfs    - bindfs (C libfuse passthrough) of the file on tmpfs
# Prints MB/s medians of RUNS runs (default 5), min-max, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
bash scripts/setup.sh bindfs
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
MAX_READAHEAD=$((8 * 1024 * 1024)) # what cachefs asks the kernel for with its default --readahead
work=$(mktemp -d /dev/shm/cachefs-bench-ceiling.XXXXXX)
pids=()
trap 'cleanup_bench "$work/memfs" "$work/cachefs" "$work/bind"' EXIT
mkdir -p "$work/data" "$work/memfs" "$work/cachefs" "$work/bind" "$work/cache"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/file.bin"
want=$(sha256sum < "$work/data/file.bin" | cut -d' ' -f1)
check() { [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$want" ] || { echo "bench: wrong bytes from $1" >&2; exit 1; }; }

start_s3 "$work/data/file.bin"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_CA_BUNDLE

node bench/lib/memory-fs.mjs "$work/memfs" "$work/data/file.bin" "$MAX_READAHEAD" &
pids+=($!)
node bin/cachefs mount "$work/cachefs" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$work/cache" --cache-size $((SIZE_MIB * 2))MiB --log-level warn --foreground &
pids+=($!)
bindfs "$work/data" "$work/bind"
wait_mounted "$work/memfs"; wait_mounted "$work/cachefs"; wait_mounted "$work/bind"
# Fills cachefs's cache and checks every path's bytes once.
for m in memfs cachefs bind; do check "$work/$m/file.bin"; done

memfs=(); cachefs=(); bind=()
for run in $(seq "$RUNS"); do
  drop_caches; memfs+=("$(read_mbps "$work/memfs/file.bin")")
  drop_caches; cachefs+=("$(read_mbps "$work/cachefs/file.bin")")
  drop_caches; bind+=("$(read_mbps "$work/bind/file.bin")")
done
drop_caches; check "$work/cachefs/file.bin"

m_memfs=$(median "${memfs[@]}"); m_cachefs=$(median "${cachefs[@]}"); m_bind=$(median "${bind[@]}")
printf '\n%s MiB file in memory, %s runs, MB/s (median, min-max)\n' "$SIZE_MIB" "$RUNS"
printf '%-40s %8s  %s\n' "memory-fs (cachefs FUSE layer, one copy)" "$m_memfs" "$(minmax "${memfs[@]}")"
printf '%-40s %8s  %s\n' "cachefs (embedded, cache on tmpfs)" "$m_cachefs" "$(minmax "${cachefs[@]}")"
printf '%-40s %8s  %s\n' "bindfs (C libfuse, file on tmpfs)" "$m_bind" "$(minmax "${bind[@]}")"
printf '\nratios: cachefs/memory-fs %s   memory-fs/bindfs %s\n' "$(ratio "$m_cachefs" "$m_memfs")" "$(ratio "$m_memfs" "$m_bind")"
