#!/usr/bin/env bash
# Read paths from a worker on the same node, in one run, on one 256 MiB file cached on the
# worker, page cache dropped before each read, the rows taken in turn in each round:
#   short_circuit (descriptor)   - the worker passes the mount its block files' descriptors (the default)
#   ... tier hidden              - the same from a mount that cannot see the tier dirs (own mount namespace)
#   short_circuit (path)         - a worker with --pass-descriptors off: the mount opens its block files by path
#   domain_socket                - that worker, the tier hidden: bytes over the Unix socket
#   remote                       - --short-circuit off: HTTP over loopback
#   block files                  - dd of the block files directly (the disk's figure)
#   bindfs                       - a bindfs (C FUSE passthrough) mount of the tier dir
# Then a data loader's epoch (FILES files of 128 KiB, default 2,000, read whole in a shuffled
# order by 4 processes, page cache dropped before each epoch) through the descriptor mount
# whose tier is hidden, against the same loader on the worker's block files directly.
# Two workers on their own tiers, one per cache group: `bench` passes descriptors, `bench-path`
# does not. PASSTHROUGH=off (the default) mounts with --no-passthrough, so every row is read
# through cachefs by the path it names; PASSTHROUGH=on lets the kernel read the files the
# co-located rows open (passed descriptors, or paths) itself (FUSE passthrough). Prints MB/s medians of RUNS runs (default 5), min-max, the ratios (targets:
# descriptor (tier hidden) >= 0.95 x path and >= 1.5 x remote; short-circuit >= 0.8 x bindfs),
# and the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache, makes namespaces)" >&2; exit 1; }
bash scripts/setup.sh bindfs
RUNS=${RUNS:-5}
PASSTHROUGH=${PASSTHROUGH:-off}
case $PASSTHROUGH in on) pt=() ;; off) pt=(--no-passthrough) ;; *) echo "bench: PASSTHROUGH=$PASSTHROUGH: expected on or off" >&2; exit 2 ;; esac
SIZE_MIB=${SIZE_MIB:-256}
work=$(mktemp -d /tmp/cachefs-bench-sc.XXXXXX)
pids=()
nspid=
# The hidden-tier mounts live in a mount namespace of their own: unmounted from inside it.
cleanup() {
  if [ -n "$nspid" ]; then
    for m in "$work/nsfd" "$work/nsds"; do nsenter -m -t "$nspid" node "$PWD/bin/cachefs" umount "$m" 2>/dev/null || true; done
    kill "$nspid" 2>/dev/null || true
  fi
  cleanup_bench "$work/sc" "$work/scp" "$work/remote" "$work/bind"
}
trap cleanup EXIT
mkdir -p "$work/data" "$work/s3" "$work/sc" "$work/scp" "$work/remote" "$work/nsfd" "$work/nsds" "$work/bind"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/file.bin"
FILES=${FILES:-2000}
mkdir -p "$work/smalltree/small"
for i in $(seq 1 "$FILES"); do head -c 131072 /dev/urandom > "$work/smalltree/small/f$i"; done
(cd "$work/smalltree/small" && ls) | shuf --random-source=<(yes) > "$work/small-names"
want=$(sha256sum < "$work/data/file.bin" | cut -d' ' -f1)
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start_bench_cluster "$work/data/file.bin" --tree "$work/smalltree"
master="127.0.0.1:$mport"
# The second worker: block files by path only.
tier2="$work/tier2"
node bin/cachefs worker --master "$master" --cache-group bench-path --id bench-worker-path --host 127.0.0.1 --port "$(free_port)" \
  --tier "SSD:$tier2:4GiB" --state-dir "$work/wstate2" --domain-socket-dir "$work/sock2" --pass-descriptors off --log-level info >>"$work/worker2.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do ls "$work/sock2" 2>/dev/null | grep -q . && break; sleep 0.1; done
sleep 2.5 # mounts refresh the worker list every 2 s

mount_args() { echo --master "$master" --cache-group "$1" --no-sharing --cache-dir "$work/c-$2" --log-level warn "${pt[@]}"; }
node bin/cachefs mount "$work/sc" $(mount_args bench sc)
node bin/cachefs mount "$work/scp" $(mount_args bench-path scp)
node bin/cachefs mount "$work/remote" $(mount_args bench remote) --short-circuit off
for m in sc scp; do   # also caches every block on both workers
  got=$(sha256sum < "$work/$m/bench/file.bin" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench: wrong bytes through $m" >&2; exit 1; }
done
bindfs "$tier" "$work/bind"
blocks=$(find "$tier/blocks" -type f | sort)
bind_blocks=$(echo "$blocks" | sed "s#^$tier#$work/bind#")

# The hidden-tier mounts: a mount namespace with both tier dirs under a tmpfs, held open by a sleeper.
unshare -m --propagation private bash -c '
  mount -t tmpfs tmpfs "$1" && mount -t tmpfs tmpfs "$2" && exec sleep infinity' _ "$tier" "$tier2" &
nspid=$!
for _ in $(seq 50); do [ "$(readlink /proc/$nspid/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && break; sleep 0.1; done
sleep 0.5
in_ns() { nsenter -m -t "$nspid" bash -c "cd $PWD && . bench/lib/common.sh && $1"; }
in_ns "node bin/cachefs mount $work/nsfd $(mount_args bench nsfd)"
in_ns "node bin/cachefs mount $work/nsds $(mount_args bench-path nsds)"
for m in nsfd nsds; do
  got=$(in_ns "sha256sum < $work/$m/bench/file.bin" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench: wrong bytes through $m (tier hidden)" >&2; exit 1; }
done

# The loader's files: cached on the first worker through the hidden mount (twice: the second
# epoch opens cached files, whose backings are then kept), and its block files, shuffled.
for _ in 1 2; do in_ns "cd $work/nsfd/bench/small && xargs -a $work/small-names -P4 -n 100 cat > /dev/null"; done
small_blocks=$(find "$tier/blocks" -type f -size -1024k | shuf --random-source=<(yes))
[ "$(echo "$small_blocks" | wc -l)" -eq "$FILES" ] || { echo "bench: expected $FILES small block files in $tier" >&2; exit 1; }
echo "$small_blocks" > "$work/small-blocks"
# epoch.sh N CMD...: the MB/s of CMD reading N files of 128 KiB (run in the namespace too).
cat > "$work/epoch.sh" <<'EOF'
t0=$(date +%s.%N); "${@:2}" > /dev/null; t1=$(date +%s.%N)
echo "scale=0; $1 * 131072 / 1000000 / ($t1 - $t0)" | bc -l
EOF

fd=(); fdh=(); path=(); ds=(); remote=(); direct=(); bind=(); ldh=(); ldt=()
for run in $(seq "$RUNS"); do
  drop_caches; fd+=("$(read_mbps "$work/sc/bench/file.bin")")
  drop_caches; fdh+=("$(in_ns "read_mbps $work/nsfd/bench/file.bin")")
  drop_caches; path+=("$(read_mbps "$work/scp/bench/file.bin")")
  drop_caches; ds+=("$(in_ns "read_mbps $work/nsds/bench/file.bin")")
  drop_caches; remote+=("$(read_mbps "$work/remote/bench/file.bin")")
  drop_caches; direct+=("$(read_mbps $blocks)")
  drop_caches; bind+=("$(read_mbps $bind_blocks)")
  drop_caches; ldh+=("$(in_ns "cd $work/nsfd/bench/small && bash $work/epoch.sh $FILES xargs -a $work/small-names -P4 -n 100 cat")")
  drop_caches; ldt+=("$(bash "$work/epoch.sh" "$FILES" xargs -a "$work/small-blocks" -P4 -n 100 cat)")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
passed=$(curl -s "http://127.0.0.1:$wport/metrics" | awk '/^cachefs_worker_passed_descriptors_total/ {print $2}')

m_fd=$(median "${fd[@]}"); m_fdh=$(median "${fdh[@]}"); m_path=$(median "${path[@]}"); m_ds=$(median "${ds[@]}")
m_remote=$(median "${remote[@]}"); m_direct=$(median "${direct[@]}"); m_bind=$(median "${bind[@]}")
m_ldh=$(median "${ldh[@]}"); m_ldt=$(median "${ldt[@]}")
printf '\n%s MiB file cached on a co-located worker, passthrough %s, %s runs, MB/s (median, min-max); load average %s before, %s after\n' "$SIZE_MIB" "$PASSTHROUGH" "$RUNS" "$load_before" "$load_after"
printf '%-36s %8s  %s\n' "short_circuit (descriptor)" "$m_fd" "$(minmax "${fd[@]}")"
printf '%-36s %8s  %s\n' "short_circuit (descriptor, hidden)" "$m_fdh" "$(minmax "${fdh[@]}")"
printf '%-36s %8s  %s\n' "short_circuit (path)" "$m_path" "$(minmax "${path[@]}")"
printf '%-36s %8s  %s\n' "domain_socket (hidden, no descr.)" "$m_ds" "$(minmax "${ds[@]}")"
printf '%-36s %8s  %s\n' "remote (HTTP, loopback)" "$m_remote" "$(minmax "${remote[@]}")"
printf '%-36s %8s  %s\n' "block files read directly" "$m_direct" "$(minmax "${direct[@]}")"
printf '%-36s %8s  %s\n' "bindfs of the tier dir" "$m_bind" "$(minmax "${bind[@]}")"
printf '%-36s %8s  %s\n' "loader epoch, descriptor (hidden)" "$m_ldh" "$(minmax "${ldh[@]}")"
printf '%-36s %8s  %s\n' "loader epoch, block files directly" "$m_ldt" "$(minmax "${ldt[@]}")"
printf '(descriptors the first worker passed: %s)\n' "$passed"
printf '\nratios: descriptor(hidden)/path %s (target >= 0.95)   descriptor(hidden)/remote %s (target >= 1.5)   descriptor/path %s\n' \
  "$(ratio "$m_fdh" "$m_path")" "$(ratio "$m_fdh" "$m_remote")" "$(ratio "$m_fd" "$m_path")"
printf 'ratios: short_circuit(descriptor)/bindfs %s (target >= 0.8)   domain_socket/remote %s   loader(hidden)/block files %s\n' \
  "$(ratio "$m_fd" "$m_bind")" "$(ratio "$m_ds" "$m_remote")" "$(ratio "$m_ldh" "$m_ldt")"
in_ns "node bin/cachefs umount $work/nsfd && node bin/cachefs umount $work/nsds"
node bin/cachefs umount "$work/sc"; node bin/cachefs umount "$work/scp"; node bin/cachefs umount "$work/remote"; fusermount -u "$work/bind"
