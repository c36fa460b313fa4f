#!/usr/bin/env bash
# The network read path against the embedded cache, in one run, on one 256 MiB file
# (UFS = s3rver on 127.0.0.1):
#   remote   - a --no-sharing cluster mount whose blocks are cached on a worker in
#              another process (HTTP over loopback)
#   embedded - a mount with the in-process cache, blocks cached
# Both warmed first; page cache dropped before every timed read. Prints MB/s
# medians of RUNS runs (default 5), min-max, and the ratio (target >= 0.6).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
bash scripts/setup.sh
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-256}
work=$(mktemp -d /tmp/cachefs-bench-cluster.XXXXXX)
pids=()
trap 'cleanup_bench "$work/remote" "$work/embedded"' EXIT
mkdir -p "$work/data" "$work/s3" "$work/remote" "$work/embedded"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/file.bin"
want=$(sha256sum < "$work/data/file.bin" | cut -d' ' -f1)
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

start_bench_cluster "$work/data/file.bin"
node bin/cachefs mount "$work/remote" --master "127.0.0.1:$mport" --cache-group bench --no-sharing --short-circuit off --cache-dir "$work/rcache" --log-level warn
node bin/cachefs mount "$work/embedded" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$work/ecache" --log-level warn

for f in "$work/remote/bench/file.bin" "$work/embedded/file.bin"; do
  got=$(sha256sum < "$f" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench: wrong bytes through $f" >&2; exit 1; }
done
remote=(); embedded=()
for run in $(seq "$RUNS"); do
  drop_caches; remote+=("$(read_mbps "$work/remote/bench/file.bin")")
  drop_caches; embedded+=("$(read_mbps "$work/embedded/file.bin")")
done
node bin/cachefs umount "$work/remote"; node bin/cachefs umount "$work/embedded"

m_remote=$(median "${remote[@]}"); m_embedded=$(median "${embedded[@]}")
printf '\n%s MiB file, warm, %s runs, MB/s (median, min-max)\n' "$SIZE_MIB" "$RUNS"
printf '%-40s %8s  %s\n' "remote worker (HTTP, loopback)" "$m_remote" "$(minmax "${remote[@]}")"
printf '%-40s %8s  %s\n' "embedded cache (in-process)" "$m_embedded" "$(minmax "${embedded[@]}")"
printf '\nratio: remote/embedded %s (target >= 0.6)\n' "$(ratio "$m_remote" "$m_embedded")"
