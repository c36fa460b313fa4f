#!/usr/bin/env bash
# Read paths from a worker on the same node, in one run, on one 256 MiB file cached
# on the worker, page cache dropped before each read:
#   short_circuit - the mount reads the worker's block files itself
#   domain_socket - the mount cannot see the tier dir (own mount namespace): bytes over the Unix socket
#   remote        - --short-circuit off: HTTP over loopback
#   block files   - dd of the block files directly (the disk's figure)
#   bindfs        - a bindfs (C FUSE passthrough) mount of the tier dir
# Prints MB/s medians of RUNS runs (default 5), min-max, and the ratios
# (targets: short-circuit >= 1.5 x remote, >= 0.8 x bindfs).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache, makes namespaces)" >&2; exit 1; }
bash scripts/setup.sh bindfs
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-256}
work=$(mktemp -d /tmp/cachefs-bench-sc.XXXXXX)
pids=()
trap 'cleanup_bench "$work/sc" "$work/remote" "$work/bind"' EXIT
mkdir -p "$work/data" "$work/s3" "$work/sc" "$work/remote" "$work/ds" "$work/bind"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/file.bin"
want=$(sha256sum < "$work/data/file.bin" | cut -d' ' -f1)
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
start_bench_cluster "$work/data/file.bin"
master="127.0.0.1:$mport"
node bin/cachefs mount "$work/sc" --master "$master" --cache-group bench --no-sharing --cache-dir "$work/c1" --log-level warn
node bin/cachefs mount "$work/remote" --master "$master" --cache-group bench --no-sharing --short-circuit off --cache-dir "$work/c2" --log-level warn
got=$(sha256sum < "$work/sc/bench/file.bin" | cut -d' ' -f1)   # also caches every block on the worker
[ "$got" = "$want" ] || { echo "bench: wrong bytes by short-circuit" >&2; exit 1; }
bindfs "$tier" "$work/bind"
blocks=$(find "$tier/blocks" -type f | sort)
bind_blocks=$(echo "$blocks" | sed "s#^$tier#$work/bind#")

# The domain-socket client: its own mount namespace with the tier dir hidden, reading RUNS times.
ds_script='
  set -e
  mount -t tmpfs tmpfs "$TIER"
  node bin/cachefs mount "$MNT" --master "$MASTER" --cache-group bench --no-sharing --cache-dir "$CACHE" --log-level warn
  . bench/lib/common.sh
  got=$(sha256sum < "$MNT/bench/file.bin" | cut -d" " -f1); [ "$got" = "$WANT" ] || { echo "bench: wrong bytes by domain socket" >&2; exit 1; }
  for i in $(seq "$RUNS"); do drop_caches; read_mbps "$MNT/bench/file.bin"; done
  node bin/cachefs umount "$MNT"'
mapfile -t ds < <(TIER="$tier" MNT="$work/ds" MASTER="$master" CACHE="$work/c3" WANT="$want" RUNS="$RUNS" unshare -m --propagation private bash -c "$ds_script")

sc=(); remote=(); direct=(); bind=()
for run in $(seq "$RUNS"); do
  drop_caches; sc+=("$(read_mbps "$work/sc/bench/file.bin")")
  drop_caches; remote+=("$(read_mbps "$work/remote/bench/file.bin")")
  drop_caches; direct+=("$(read_mbps $blocks)")
  drop_caches; bind+=("$(read_mbps $bind_blocks)")
done
node bin/cachefs umount "$work/sc"; node bin/cachefs umount "$work/remote"; fusermount -u "$work/bind"

m_sc=$(median "${sc[@]}"); m_ds=$(median "${ds[@]}"); m_remote=$(median "${remote[@]}"); m_direct=$(median "${direct[@]}"); m_bind=$(median "${bind[@]}")
printf '\n%s MiB file cached on a co-located worker, %s runs, MB/s (median, min-max)\n' "$SIZE_MIB" "$RUNS"
printf '%-36s %8s  %s\n' "short_circuit" "$m_sc" "$(minmax "${sc[@]}")"
printf '%-36s %8s  %s\n' "domain_socket" "$m_ds" "$(minmax "${ds[@]}")"
printf '%-36s %8s  %s\n' "remote (HTTP, loopback)" "$m_remote" "$(minmax "${remote[@]}")"
printf '%-36s %8s  %s\n' "block files read directly" "$m_direct" "$(minmax "${direct[@]}")"
printf '%-36s %8s  %s\n' "bindfs of the tier dir" "$m_bind" "$(minmax "${bind[@]}")"
printf '\nratios: short_circuit/remote %s (target >= 1.5)   short_circuit/bindfs %s (target >= 0.8)   domain_socket/remote %s\n' \
  "$(ratio "$m_sc" "$m_remote")" "$(ratio "$m_sc" "$m_bind")" "$(ratio "$m_ds" "$m_remote")"
