#!/usr/bin/env bash
# This checkout against another revision, in paired rounds on the same data: the way to
# tell a regression from this machine's drift (its speed moves by tens of percent over
# minutes, so figures of runs made at different times do not compare).
#
#   bash bench/ab.sh REV        (e.g. bash bench/ab.sh 5180849)
#
# REV is built in a temporary git worktree (node_modules shared with this checkout). Each
# side gets its own cluster (master + one worker, its own code) on one s3rver, an embedded
# mount and a short-circuit cluster mount, all mounted at once. After a warm-up that caches
# everything, every round takes each side in turn: fio 4-thread random 128 KiB reads of a
# 256 MiB file, the small files read in a shuffled order by 4 readers, and a sequential read
# of the 256 MiB file, the page cache dropped before each. Prints medians and B/A ratios
# (A = REV, B = this checkout); every read is checked against checksums.
# Env: ROUNDS (5), FIO_SECONDS (6), SMALL (2000 files of 128 KiB), MID_MIB (256).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache, mounts)" >&2; exit 1; }
[ $# -eq 1 ] || { echo "usage: bash bench/ab.sh REV (a git revision to compare this checkout with)" >&2; exit 2; }
rev=$(git rev-parse --verify --quiet "$1^{commit}") || { echo "bench: '$1' is not a git revision of this repository" >&2; exit 2; }
bash scripts/setup.sh fio
ROUNDS=${ROUNDS:-5}; FIO_SECONDS=${FIO_SECONDS:-6}; SMALL=${SMALL:-2000}; MID_MIB=${MID_MIB:-256}
unset AWS_CA_BUNDLE AWS_PROFILE AWS_SESSION_TOKEN
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
work=$(mktemp -d /tmp/cachefs-ab.XXXXXX)
pids=(); mounts=()
here=$PWD
cleanup() {
  for m in "${mounts[@]}"; do mountpoint -q "$m" && { node bin/cachefs umount "$m" 2>/dev/null || umount -l "$m"; }; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git worktree remove --force "$work/rev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

log "building $rev in a worktree"
git worktree add --quiet --detach "$work/rev" "$rev"
ln -s "$here/node_modules" "$work/rev/node_modules"
(cd "$work/rev" && node_modules/.bin/tsc -p tsconfig.json) >/dev/null
npm run build >/dev/null

log "data: ${MID_MIB} MiB and $SMALL x 128 KiB"
data=$work/data; mkdir -p "$data/s"
head -c $((MID_MIB << 20)) /dev/urandom > "$data/mid.bin"
for i in $(seq -w 1 "$SMALL"); do head -c 131072 /dev/urandom > "$data/s/f$i"; done
mid_sum=$(sha256sum < "$data/mid.bin" | cut -d' ' -f1)
(cd "$data" && find s -type f | shuf --random-source=<(yes)) > "$work/small.list"
(cd "$data" && xargs -a "$work/small.list" sha256sum | sort -k2) > "$work/small.sums"
start_s3 --tree "$data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# side A|B TREE: a master, a worker and two mounts (embedded, short-circuit) of TREE's code.
declare -A root
side() {
  local s=$1 tree=$2 d=$work/$1 mport wport
  mkdir -p "$d/m/embedded" "$d/m/sc"
  (umask 077 && openssl rand -hex 32 > "$d/token")
  export CACHEFS_AUTH_TOKEN_FILE=$d/token   # read by the code that has cluster secrets, ignored by older code
  mport=$(free_port); wport=$(free_port)
  (cd "$tree" && exec node bin/cachefs master --meta-dir "$d/meta" --host 127.0.0.1 --port "$mport" --log-level warn) >"$d/master.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (cd "$tree" && node bin/cachefs mount-table list --master "127.0.0.1:$mport") >/dev/null 2>&1 && break; sleep 0.1; done
  (cd "$tree" && node bin/cachefs mount-table add /bench s3://bench --master "127.0.0.1:$mport" \
    --option "s3.endpoint=http://127.0.0.1:$s3port" --option s3.accessKeyId=S3RVER --option s3.secretAccessKey=S3RVER) >/dev/null
  (cd "$tree" && exec node bin/cachefs worker --master "127.0.0.1:$mport" --cache-group bench --id "bench-$s" --host 127.0.0.1 --port "$wport" \
    --tier "SSD:$d/tier:4GiB" --state-dir "$d/wstate" --domain-socket-dir "$d/sock" --log-level warn) >"$d/worker.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do ls "$d/sock" 2>/dev/null | grep -q . && break; sleep 0.1; done
  sleep 2.5 # mounts refresh the worker list every 2 s
  (cd "$tree" && node bin/cachefs mount "$d/m/embedded" --ufs s3://bench --s3-endpoint "http://127.0.0.1:$s3port" --cache-dir "$d/c1" --cache-size 4GiB --log-file "$d/embedded.log")
  mounts+=("$d/m/embedded")
  (cd "$tree" && node bin/cachefs mount "$d/m/sc" --master "127.0.0.1:$mport" --cache-group bench --no-sharing --short-circuit uuid --cache-dir "$d/c2" --log-file "$d/sc.log")
  mounts+=("$d/m/sc")
  root[$s,embedded]=$d/m/embedded; root[$s,sc]=$d/m/sc/bench
  unset CACHEFS_AUTH_TOKEN_FILE
}
log "starting side A ($rev) and side B (this checkout)"
side A "$work/rev"
side B "$here"

check() { # check DIR: the bytes of everything
  [ "$(sha256sum < "$1/mid.bin" | cut -d' ' -f1)" = "$mid_sum" ] || { echo "bench: wrong bytes in $1/mid.bin" >&2; exit 1; }
  (cd "$1" && xargs -a "$work/small.list" -P 4 -n 100 sha256sum) | sort -k2 | cmp -s - "$work/small.sums" || { echo "bench: wrong bytes among small files in $1" >&2; exit 1; }
}
fio_rand() {
  fio --name=rand --filename="$1/mid.bin" --readonly --rw=randread --bs=128k --numjobs=4 --ioengine=psync --time_based \
    --runtime="$FIO_SECONDS" --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e6))'
}
small() {
  local t0 t1; t0=$(date +%s.%N)
  (cd "$1" && xargs -a "$work/small.list" -P 4 -n 100 cat > /dev/null)
  t1=$(date +%s.%N); awk -v n="$SMALL" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }'
}
log "warming (and checking) every mount"
for s in A B; do for m in embedded sc; do check "${root[$s,$m]}"; done; done

declare -A res
for r in $(seq "$ROUNDS"); do
  for m in embedded sc; do for s in A B; do
    d=${root[$s,$m]}
    drop_caches; res[$s,$m,fio]+=" $(fio_rand "$d")"
    drop_caches; res[$s,$m,small]+=" $(small "$d")"
    drop_caches; res[$s,$m,seq]+=" $(read_mbps "$d/mid.bin")"
  done; done
  log "round $r of $ROUNDS done"
done
for s in A B; do for m in embedded sc; do check "${root[$s,$m]}"; done; done

printf '\n# bench/ab.sh: A = %s, B = %s (%s rounds, %s)\n\n' "$(git rev-parse --short "$rev")" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes')" "$ROUNDS" "$(date -Iseconds)"
printf '| mount | workload | A median (all) | B median (all) | B/A |\n|---|---|---|---|---|\n'
for m in embedded sc; do
  for w in fio small seq; do
    unit=MB/s; [ "$w" = small ] && unit=files/s
    # shellcheck disable=SC2086 # one word per round
    a=$(median ${res[A,$m,$w]}); b=$(median ${res[B,$m,$w]})
    printf '| %s | %s (%s) | %s (%s) | %s (%s) | %s |\n' "$m" "$w" "$unit" "$a" "${res[A,$m,$w]# }" "$b" "${res[B,$m,$w]# }" "$(ratio "$b" "$a")"
  done
done
