#!/usr/bin/env bash
# Where a cold read's CPU goes: the same 1 GiB file read cold through s3fs (use_cache)
# and through cachefs (embedded cache), in alternating rounds against one s3rver on
# 127.0.0.1. For each read: MB/s, the CPU seconds the S3 server and the client's serving
# process spent during it, and the requests the server received (method, ranged-GET size).
# On this 2-core machine a cold read is bound by the CPU of both; this shows how each
# client spends it, and the machine's CPU in all (busy: every CPU's non-idle time; rest:
# busy less server and client: the reader, kernel threads, interrupts). "s3rver main user" is
# the user time of the server's main thread alone: its JavaScript, where it spends more per
# GiB serving cachefs than serving s3fs (README, Cold).
# Env: RUNS (default 3), SIZE_MIB (1024), CACHEFS_ARGS (extra mount flags), PRIME=1 (each
# mount first reads another file of SIZE_MIB cold, unmeasured: a mount that has served
# reads before, as a long-running one has; without it the measured read is the mount's first).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache, mounts)" >&2; exit 1; }
bash scripts/setup.sh s3fs
RUNS=${RUNS:-3}; SIZE_MIB=${SIZE_MIB:-1024}
unset AWS_CA_BUNDLE AWS_PROFILE AWS_SESSION_TOKEN
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
work=$(mktemp -d /tmp/cachefs-cold-cpu.XXXXXX)
pids=()
trap 'cleanup_bench "$work/m"' EXIT
mkdir -p "$work/data" "$work/m"
head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$work/data/big.bin"
want=$(sha256sum < "$work/data/big.bin" | cut -d' ' -f1)
objects=("$work/data/big.bin")
[ "${PRIME:-0}" = 1 ] && { head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$work/data/prime.bin"; objects+=("$work/data/prime.bin"); }
start_s3 "${objects[@]}"
s3pid=${pids[0]}
echo "S3RVER:S3RVER" > "$work/passwd"; chmod 600 "$work/passwd"
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }   # utime + stime, all threads
main_user_ticks() { awk '{print $14}' /proc/"$1"/task/"$1"/stat; }   # utime of the main thread
seconds() { awk -v a="$1" -v b="$2" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) / t }'; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }   # user nice system irq softirq steal

declare -A mbps s3cpu s3main clientcpu machinecpu restcpu
for i in $(seq "$RUNS"); do
  for s in s3fs cachefs; do
    rm -rf "$work/c"; mkdir -p "$work/c"
    if [ "$s" = s3fs ]; then
      s3fs bench "$work/m" -o url="http://127.0.0.1:$s3port" -o use_path_request_style -o passwd_file="$work/passwd" -o use_cache="$work/c" -o ro
      wait_mounted "$work/m"; client=$(pgrep -n -x s3fs)
    else
      # shellcheck disable=SC2086 # extra flags, word-split on purpose
      node bin/cachefs mount "$work/m" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$work/c" --cache-size 8GiB \
        --log-level warn --pid-file "$work/pid" ${CACHEFS_ARGS:-}
      client=$(serving_pid_of "$work/pid")
    fi
    stat "$work/m/big.bin" > /dev/null
    [ "${PRIME:-0}" = 1 ] && { drop_caches; cat "$work/m/prime.bin" > /dev/null; }
    kill -USR2 "$s3pid"   # forget the requests so far
    drop_caches
    a=$(cpu_ticks "$s3pid"); j=$(main_user_ticks "$s3pid"); b=$(cpu_ticks "$client"); c=$(busy_ticks)
    mb=$(read_mbps "$work/m/big.bin")
    a2=$(cpu_ticks "$s3pid"); j2=$(main_user_ticks "$s3pid"); b2=$(cpu_ticks "$client"); c2=$(busy_ticks)
    n=$(grep -c REQUESTS "$work/s3.out"); kill -USR2 "$s3pid"
    for _ in $(seq 50); do [ "$(grep -c REQUESTS "$work/s3.out")" -gt "$n" ] && break; sleep 0.1; done
    got=$(sha256sum < "$work/m/big.bin" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "bench: wrong bytes through $s" >&2; exit 1; }
    mbps[$s]+=" $mb"; s3cpu[$s]+=" $(seconds "$a" "$a2")"; s3main[$s]+=" $(seconds "$j" "$j2")"; clientcpu[$s]+=" $(seconds "$b" "$b2")"; machinecpu[$s]+=" $(seconds "$c" "$c2")"
    restcpu[$s]+=" $(seconds $((a2 - a + b2 - b)) $((c2 - c)))"
    printf 'round %s %-8s %5s MB/s  s3rver %s s (main user %s)  client %s s  machine %s s  %s\n' "$i" "$s" "$mb" "$(seconds "$a" "$a2")" "$(seconds "$j" "$j2")" "$(seconds "$b" "$b2")" "$(seconds "$c" "$c2")" \
      "$(grep REQUESTS "$work/s3.out" | tail -1 | cut -d' ' -f2-)"
    if [ "$s" = s3fs ]; then fusermount -u "$work/m"; else node bin/cachefs umount "$work/m"; fi
    sleep 1.5
  done
done

# shellcheck disable=SC2086 # one word per run
{
  printf '\n%s MiB cold, %s rounds: median (min-max)\n' "$SIZE_MIB" "$RUNS"
  printf '%-8s %14s %22s %22s %22s %22s %22s\n' "" "MB/s" "s3rver CPU s" "s3rver main user s" "client CPU s" "machine busy s" "rest s"
  for s in s3fs cachefs; do
    printf '%-8s %5s %-9s' "$s" "$(median ${mbps[$s]})" "($(minmax ${mbps[$s]}))"
    for v in "${s3cpu[$s]}" "${s3main[$s]}" "${clientcpu[$s]}" "${machinecpu[$s]}" "${restcpu[$s]}"; do printf ' %8s %-13s' "$(median $v)" "($(minmax $v))"; done
    echo
  done
  printf '\nratio: cachefs/s3fs %s (target >= 1.2)\n' "$(ratio "$(median ${mbps[cachefs]})" "$(median ${mbps[s3fs]})")"
}
