#!/usr/bin/env bash
# cachefs against the clients users would pick, side by side, in one run, on the same
# data served by s3rver on 127.0.0.1 (see README, "Comparing with other clients"), which
# answers like a distant store: TTFB_MS (20) before every request, CONN_MBPS (100) per
# connection (bench/lib/s3-server.mjs), as S3 does, rather than at loopback speed.
#
# Systems: cachefs (embedded cache), cachefs cluster with short-circuit, cachefs cluster
# with --short-circuit off (network path), s3fs (use_cache), rclone mount
# (--vfs-cache-mode full), bindfs over the cachefs worker's tier dir (a C FUSE
# passthrough: the practical ceiling of a FUSE read), `tier`: the embedded cache's own
# files read directly from its file system (the same bytes, without FUSE), and direct
# reads of the data from local disk and tmpfs (tmpfs only for the re-read with page cache,
# as its bytes never leave memory).
# Workloads: cold and warm sequential reads of a 1 GiB file, warm re-read with page
# cache, fio 4-thread random 128 KiB reads of a 256 MiB file, find+stat over the small
# files cold and warm, and a read of every small file in random order by 4 readers (the ML
# data-loader's epoch), cold and warm. Every read is checked against checksums. The server's
# requests during each cold round are counted (bench/work/compare-requests.txt, or next to
# the results). Cold reads come first, in
# rounds that take each system in turn (the machine's speed drifts over minutes, and the
# host keeps recently read disk bytes for a while); warm reads and re-reads then run in
# rounds too, every system mounted at once; the other workloads run system by system.
# Env: RUNS (default 3), BIG_MIB (1024), MID_MIB (256), SMALL_DIRS (100), SMALL_PER_DIR (100),
# SMALL_KIB (128), FIO_SECONDS (8), TTFB_MS (20), CONN_MBPS (100; 0: no cap), SYSTEMS
# (default: all of them, in the order above; `tier` needs `cachefs`).
# Results: bench/results/compare.{json,md}; a run of fewer SYSTEMS writes bench/work/compare.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
. bench/lib/cluster-env.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache, mounts)" >&2; exit 1; }
bash scripts/setup.sh bindfs s3fs rclone fio
RUNS=${RUNS:-3}; BIG_MIB=${BIG_MIB:-1024}; MID_MIB=${MID_MIB:-256}; TTFB_MS=${TTFB_MS:-20}; CONN_MBPS=${CONN_MBPS:-100}
SMALL_DIRS=${SMALL_DIRS:-100}; SMALL_PER_DIR=${SMALL_PER_DIR:-100}; SMALL_KIB=${SMALL_KIB:-128}; FIO_SECONDS=${FIO_SECONDS:-8}
unset AWS_CA_BUNDLE AWS_PROFILE AWS_SESSION_TOKEN
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
work=$(mktemp -d /tmp/cachefs-compare.XXXXXX)
pids=(); mounts=()
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -d "$work" ]; then
    mkdir -p /tmp/cachefs-compare-logs && cp "$work"/*.log /tmp/cachefs-compare-logs/ 2>/dev/null || true
    echo "bench: failed ($rc); logs kept in /tmp/cachefs-compare-logs" >&2
  fi
  for m in "${mounts[@]}"; do mountpoint -q "$m" && { fusermount -uz "$m" 2>/dev/null || umount -l "$m"; }; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "${shm:-}"
}
trap cleanup EXIT INT TERM
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- data
log "generating data: ${BIG_MIB} MiB, ${MID_MIB} MiB, $((SMALL_DIRS * SMALL_PER_DIR)) x ${SMALL_KIB} KiB"
data="$work/data"; mkdir -p "$data"
head -c $((BIG_MIB * 1048576)) /dev/urandom > "$data/big.bin"
head -c $((MID_MIB * 1048576)) /dev/urandom > "$data/mid.bin"
for d in $(seq -w 0 $((SMALL_DIRS - 1))); do
  mkdir -p "$data/s$d"
  for f in $(seq -w 0 $((SMALL_PER_DIR - 1))); do head -c $((SMALL_KIB * 1024)) /dev/urandom > "$data/s$d/f$f"; done
done
big_sum=$(sha256sum < "$data/big.bin" | cut -d' ' -f1)
(cd "$data" && find . -path './s*' -type f | sed 's#^\./##' | sort) > "$work/small.list"
(cd "$data" && xargs -a "$work/small.list" sha256sum | sort -k2) > "$work/small.sums"
shuf --random-source=<(yes) "$work/small.list" > "$work/small.random"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "starting s3rver, master and worker; uploading"
export S3_FIRST_BYTE_MS=$TTFB_MS; [ "$CONN_MBPS" = 0 ] || export S3_CONNECTION_MBPS=$CONN_MBPS
start_bench_cluster --tree "$data"
s3pid=${pids[0]}
master="127.0.0.1:$mport"
# requests_since: the server's request counts since the last call (one JSON object).
requests_since() {
  local n; n=$(grep -c REQUESTS "$work/s3.out" || true)
  kill -USR2 "$s3pid"
  for _ in $(seq 100); do [ "$(grep -c REQUESTS "$work/s3.out")" -gt "$n" ] && break; sleep 0.05; done
  grep REQUESTS "$work/s3.out" | tail -1 | cut -d' ' -f2-
}
requests_since > /dev/null

# ---------------------------------------------------------------- systems
# Each system: mount_<s> (mounts at $work/m/<s>, cold: empty caches), root_<s> (where the data appears).
systems=(${SYSTEMS:-cachefs cachefs_sc cachefs_remote s3fs rclone bindfs tier local tmpfs})
compared() { [[ " ${systems[*]} " == *" $1 "* ]]; }   # compared SYSTEM: is it among the systems of this run?
declare -A root
for s in "${systems[@]}"; do mkdir -p "$work/m/$s"; done
root[cachefs]="$work/m/cachefs"; root[cachefs_sc]="$work/m/cachefs_sc/bench"; root[cachefs_remote]="$work/m/cachefs_remote/bench"
root[s3fs]="$work/m/s3fs"; root[rclone]="$work/m/rclone"; root[bindfs]="$work/m/bindfs"; root[local]="$data"; root[tier]="$work/c/cachefs"
shm=$(mktemp -d /dev/shm/cachefs-compare.XXXXXX); root[tmpfs]=$shm
echo "S3RVER:S3RVER" > "$work/s3fs.passwd"; chmod 600 "$work/s3fs.passwd"

serving_pid=""
mount_system() {
  local s=$1 m="$work/m/$1"
  case $s in
    cachefs)
      rm -rf "$work/c/$s"
      node bin/cachefs mount "$m" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$work/c/$s" --cache-size 8GiB --log-level info --log-file "$work/$s.log" --pid-file "$work/$s.pid"
      serving_pid=$(serving_pid_of "$work/$s.pid") ;;
    cachefs_sc|cachefs_remote)
      local sc=uuid; [ "$s" = cachefs_remote ] && sc=off
      rm -rf "$work/c/$s"
      node bin/cachefs mount "$m" --master "$master" --cache-group bench --no-sharing --short-circuit "$sc" --cache-dir "$work/c/$s" --log-level info --log-file "$work/$s.log" --pid-file "$work/$s.pid"
      serving_pid=$(serving_pid_of "$work/$s.pid") ;;
    s3fs)
      rm -rf "$work/c/s3fs"; mkdir -p "$work/c/s3fs"
      s3fs bench "$m" -o url="http://127.0.0.1:$s3port" -o use_path_request_style -o passwd_file="$work/s3fs.passwd" \
        -o use_cache="$work/c/s3fs" -o ro -o stat_cache_expire=900
      wait_mounted "$m"; serving_pid=$(pgrep -n -x s3fs || true) ;;
    rclone)
      rm -rf "$work/c/rclone"
      RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ENDPOINT="http://127.0.0.1:$s3port" \
      RCLONE_CONFIG_B_ACCESS_KEY_ID=S3RVER RCLONE_CONFIG_B_SECRET_ACCESS_KEY=S3RVER RCLONE_CONFIG_B_FORCE_PATH_STYLE=true \
        rclone mount b:bench "$m" --vfs-cache-mode full --cache-dir "$work/c/rclone" --read-only --config /dev/null >"$work/rclone.log" 2>&1 &
      serving_pid=$!; pids+=($serving_pid)
      wait_mounted "$m" ;;
    bindfs)
      bindfs -o ro "$tier" "$m"; serving_pid="" ;;
    local|tier) return 0 ;;
    tmpfs) cp "$data/big.bin" "$shm/"; return 0 ;;
  esac
  mounts+=("$m")
}
umount_system() {
  local m="$work/m/$1"
  case $1 in local|tmpfs|tier) return 0 ;; esac
  case $1 in cachefs*) node bin/cachefs umount "$m" ;; *) fusermount -u "$m" 2>/dev/null || umount -l "$m" ;; esac
  sleep 1.2
}

# ---------------------------------------------------------------- measurements
declare -A result   # result[system,metric]="median min-max"
record() { result[$1,$2]="$(median "${@:3}") $(minmax "${@:3}")"; }
check_big() { local got; got=$(sha256sum < "$1" | cut -d' ' -f1); [ "$got" = "$big_sum" ] || { echo "bench: wrong bytes in $1 ($2)" >&2; exit 1; }; }
find_stat() { local t0 t1 n; t0=$(date +%s.%N); n=$(find "$1" -path "$1/s*" -type f -printf '%s\n' | wc -l); t1=$(date +%s.%N); [ "$n" = "$(wc -l < "$work/small.list")" ] || { echo "bench: find saw $n files in $1" >&2; exit 1; }; awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }'; }
# small_random ROOT: the data-loader's epoch, every small file once in a shuffled order by 4
# readers; prints files/s. For `tier` the files are the embedded cache's (one per small
# file, in a shuffled order of their own), checked as a set of sums.
small_random() {
  local t0 t1 list="$work/small.random"
  [ "$1" = "${root[tier]}" ] && list="$work/tier.random"
  t0=$(date +%s.%N)
  (cd "$1" && xargs -a "$list" -P 4 -n 100 sha256sum) | sort -k2 > "$work/got.sums"
  t1=$(date +%s.%N)
  if [ "$1" = "${root[tier]}" ]; then
    cmp -s <(cut -d' ' -f1 "$work/got.sums" | sort) <(cut -d' ' -f1 "$work/small.sums" | sort) || { echo "bench: the cache's small files are not the data's" >&2; exit 1; }
  else
    cmp -s "$work/got.sums" "$work/small.sums" || { echo "bench: wrong bytes among small files in $1" >&2; exit 1; }
  fi
  awk -v n="$(wc -l < "$work/small.list")" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }'
}
# tier_files SIZE_KIB: the embedded cache's files of that size, relative to its dir, one a line.
tier_files() { (cd "${root[tier]}" && find . -type f -size "$1"k | sed 's#^\./##'); }
fio_rand() {
  fio --name=rand --filename="$1/mid.bin" --readonly --rw=randread --bs=128k --numjobs=4 --ioengine=psync --time_based \
    --runtime="$FIO_SECONDS" --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e6))'
}
rss_during() { # rss_during PID FILE: peak VmRSS (MiB) of PID while FILE is read once
  local pid=$1 peak=0 r
  (cat "$2" > /dev/null) & local reader=$!
  while kill -0 "$reader" 2>/dev/null; do
    r=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r; sleep 0.05
  done
  wait "$reader"; echo $((peak / 1024))
}

# ---------------------------------------------------------------- cold reads, systems interleaved
# The machine's speed drifts by tens of percent over minutes: each round reads cold once
# per system, so every system's runs span the same stretch of time.
fetching=(); for s in "${systems[@]}"; do case $s in bindfs|local|tmpfs|tier) ;; *) fetching+=("$s") ;; esac; done
declare -A colds finds loaders
requests=$work/requests.txt; : > "$requests"
for i in $(seq "$RUNS"); do
  for s in "${fetching[@]}"; do
    log "== cold, round $i: $s"
    [ "$s" = cachefs_sc ] || [ "$s" = cachefs_remote ] && start_worker
    mount_system "$s"
    r=${root[$s]}
    requests_since > /dev/null
    drop_caches; finds[$s]+=" $(find_stat "$r")"
    echo "round $i $s find+stat: $(requests_since)" >> "$requests"
    drop_caches; colds[$s]+=" $(read_mbps "$r/big.bin")"
    echo "round $i $s big.bin: $(requests_since)" >> "$requests"
    check_big "$r/big.bin" "$s"
    # After the find, as a loader lists its dataset before its first epoch.
    drop_caches; loaders[$s]+=" $(small_random "$r")"
    echo "round $i $s loader: $(requests_since) (load average $(cut -d' ' -f1-3 /proc/loadavg))" >> "$requests"
    umount_system "$s"
  done
done
for s in "${fetching[@]}"; do
  # shellcheck disable=SC2086 # one word per run
  record "$s" cold_seq ${colds[$s]}; record "$s" find_cold ${finds[$s]}; record "$s" loader_cold ${loaders[$s]}
done

# ---------------------------------------------------------------- warm reads, systems interleaved
# Every system mounted at once, its cache filled, then rounds that take each system in
# turn: a warm read (page cache dropped), then two re-reads of which the second is
# measured. The first read of a page after the one that brought it in moves it to the
# kernel's active list: on FUSE's 4 KiB pages that costs half the speed of that one
# re-read (perf: the LRU lock), on tmpfs it falls on the first read after the copy, on
# ext4's large folios it is hardly seen. Measuring the read after it puts every system,
# tmpfs included, at the same point: the steady state of a dataset read epoch after epoch.
log "== warm reads: mounting every system, filling the caches"
{ compared cachefs_sc || compared cachefs_remote; } && start_worker
for s in "${systems[@]}"; do
  case $s in bindfs|tier) continue ;; esac   # over the tiers, once they hold the blocks
  mount_system "$s"
  case $s in local|tmpfs) ;; *)
    cat "${root[$s]}/big.bin" > /dev/null   # fills the caches (cold reads were measured above)
    check_big "${root[$s]}/big.bin" "$s"
    drop_caches; result[$s,rss_mib]="$(rss_during "$serving_pid" "${root[$s]}/big.bin") -" ;;
  esac
done
if compared bindfs; then
  mount_system bindfs
  # The blocks of the 1 GiB file (4 MiB each; nothing else large is cached yet): a sequential read;
  # not the worker's whole-object file of it (assembled for the co-located mount's passthrough).
  bind_files=$(find "${root[bindfs]}/blocks" -type f -size +1M ! -size "$((BIG_MIB * 1024))k" | sort)
fi
if compared tier; then
  # The embedded cache's files of the 1 GiB file: its whole-object file (assembled in the
  # background once its last block is in: waited for), else its blocks.
  for _ in $(seq 60); do
    tier_big=$(cd "${root[tier]}" && find . -path '*/tmp' -prune -o -type f -size "$((BIG_MIB * 1024))k" -print)
    [ -n "$tier_big" ] && break; sleep 1
  done
  [ -n "$tier_big" ] || tier_big=$(cd "${root[tier]}" && find . -type f -size +1M | sort)
  tier_bytes=$(cd "${root[tier]}" && stat -c %s $tier_big | awk '{s+=$1} END {print s}')
  [ "$tier_bytes" = $((BIG_MIB * 1048576)) ] || { echo "bench: the cache's files of big.bin hold $tier_bytes bytes" >&2; exit 1; }
fi
declare -A warms rers
for i in $(seq "$RUNS"); do
  for s in "${systems[@]}"; do
    files="${root[$s]}/big.bin"; [ "$s" = bindfs ] && files=$bind_files
    [ "$s" = tier ] && files=$(for f in $tier_big; do echo "${root[tier]}/$f"; done)
    # shellcheck disable=SC2086 # bindfs: one word per block file
    { drop_caches; w=$(read_mbps $files); read_mbps $files > /dev/null; rers[$s]+=" $(read_mbps $files)"; }
    [ "$s" = tmpfs ] || warms[$s]+=" $w"   # tmpfs keeps its bytes in memory: no warm read without page cache
  done
done
for s in "${systems[@]}"; do
  # shellcheck disable=SC2086 # one word per run
  { [ "$s" = tmpfs ] || record "$s" warm_seq ${warms[$s]}; record "$s" warm_reread ${rers[$s]}; }
done
for s in "${systems[@]}"; do case $s in bindfs|tier) ;; *) check_big "${root[$s]}/big.bin" "$s, after the warm rounds" ;; esac; done

# ---------------------------------------------------------------- the other workloads, system by system
for s in "${systems[@]}"; do
  case $s in bindfs|tmpfs) continue ;; esac
  log "== $s"
  r=${root[$s]}
  if [ "$s" = tier ]; then   # the embedded cache's small files (filled by cachefs's loader epochs above)
    tier_files "$SMALL_KIB" | shuf --random-source=<(yes) > "$work/tier.random"
    [ "$(wc -l < "$work/tier.random")" = "$(wc -l < "$work/small.list")" ] || { echo "bench: the cache holds $(wc -l < "$work/tier.random") files of ${SMALL_KIB} KiB" >&2; exit 1; }
    w=(); for i in $(seq "$RUNS"); do drop_caches; w+=("$(small_random "$r")"); done; record "$s" small_random "${w[@]}"
    continue
  fi
  if [ "$s" = local ]; then drop_caches; record "$s" find_cold "$(find_stat "$r")"; else cat "$r/mid.bin" > /dev/null; fi
  f=(); for i in $(seq "$RUNS"); do drop_caches; f+=("$(fio_rand "$r")"); done; record "$s" fio_rand "${f[@]}"
  find_stat "$r" > /dev/null   # warms the metadata caches
  w=(); for i in $(seq "$RUNS"); do w+=("$(find_stat "$r")"); done; record "$s" find_warm "${w[@]}"
  small_random "$r" > /dev/null   # warms the caches
  w=(); for i in $(seq "$RUNS"); do drop_caches; w+=("$(small_random "$r")"); done; record "$s" small_random "${w[@]}"
done
for s in "${systems[@]}"; do umount_system "$s"; done

# ---------------------------------------------------------------- report
out=bench/results/compare; [ -n "${SYSTEMS:-}" ] && out=bench/work/compare
mkdir -p "$(dirname "$out")"
metrics=(cold_seq loader_cold find_cold warm_seq warm_reread fio_rand find_warm small_random rss_mib)
{
  for s in "${systems[@]}"; do for m in "${metrics[@]}"; do
    [ -n "${result[$s,$m]:-}" ] && echo "$s $m ${result[$s,$m]}"
  done; done
} > "$work/results.txt"
cp "$requests" "$out-requests.txt"
python3 bench/lib/compare-report.py "$work/results.txt" "$RUNS" \
  "BIG_MIB=$BIG_MIB MID_MIB=$MID_MIB SMALL=$((SMALL_DIRS * SMALL_PER_DIR))x${SMALL_KIB}KiB FIO_SECONDS=$FIO_SECONDS TTFB_MS=$TTFB_MS CONN_MBPS=$CONN_MBPS" \
  "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end" "$out"
cat "$out.md"
