# Shared helpers of the bench scripts: timing a read, medians, ratios, cleanup.
# Sourced, not run.

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# cleanup_bench MOUNT...: for an EXIT trap: unmounts what is still mounted, stops the
# processes in the pids array, removes $work.
cleanup_bench() {
  for m in "$@"; do mountpoint -q "$m" && { fusermount -uz "$m" || umount -l "$m"; }; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# read_mbps FILE...: reads the files once with dd-sized reads, prints MB/s.
read_mbps() {
  local bytes t0 t1
  bytes=$(stat -c %s "$@" | awk '{s+=$1} END {print s}')
  t0=$(date +%s.%N)
  cat "$@" > /dev/null
  t1=$(date +%s.%N)
  awk -v n="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) / 1e6 }'
}

# serving_pid_of PIDFILE: the pid of the serving process of a cachefs mount whose supervisor
# wrote PIDFILE (--pid-file): the supervisor's child.
serving_pid_of() { awk '{print $1}' /proc/"$(cat "$1")"/task/*/children; }

# median N...: the median of the numbers.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
minmax() { printf '%s\n' "$@" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", (b > 0) ? a / b : 0 }'; }

# wait_mounted DIR: waits up to 30 s for DIR to be a mount point.
wait_mounted() {
  for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done
  echo "bench: $1 did not get mounted" >&2; return 1
}

# start_s3 ARGS...: an S3 server (s3rver with the tests' listing fix) with bucket `bench`
# holding ARGS (see bench/lib/s3-server.mjs); needs $work and the pids array; sets s3port.
# Its malloc keeps freed memory instead of handing it back to the system: s3rver reads
# objects in 64 KiB buffers, and when glibc had trimmed the freed ones away the next
# ones took fresh pages, whose faults cost ~10-30 us each in this VM (PVM: `dd bs=1G`
# spends 2.7 s of system time faulting in its 1 GiB buffer). Serving a cold 1 GiB read
# (8 MiB ranges, 4 at a time), one server instance took 52-67k faults and 3.7-3.9 s of
# CPU per read, others 0.3-15k; with this setting, 0.1-2.8k in six instances. Its CPU
# per read still swings (1.4-3.1 s) for reasons this does not touch.
S3_SERVER_TUNABLES=glibc.malloc.trim_threshold=4294967296
start_s3() {
  node_modules/.bin/tsc -p tsconfig.bench.json
  GLIBC_TUNABLES=$S3_SERVER_TUNABLES node bench/lib/s3-server.mjs bench "$@" > "$work/s3.out" &
  pids+=($!)
  # Ready once its uploads are in: S3_START_SECONDS (default 300) at most.
  for _ in $(seq $((${S3_START_SECONDS:-300} * 10))); do grep -q PORT "$work/s3.out" 2>/dev/null && break; sleep 0.1; done
  s3port=$(awk '/PORT/ {print $2}' "$work/s3.out")
  [ -n "$s3port" ] || { echo "bench: s3 server did not start" >&2; return 1; }
}
