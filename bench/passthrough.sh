#!/usr/bin/env bash
# Warm reads with FUSE passthrough, in one run: the same cached bytes read
#   passthrough    - an embedded mount (the kernel reads the block file itself)
#   no-passthrough - the same with --no-passthrough (every byte through /dev/fuse)
#   tier           - cat of the same bytes in the tier directly (the ceiling): the big
#                    file's whole-object file, the small files' block files
# for one SIZE_MIB file (default 1024: 256 blocks of 4 MiB, passed through from its
# whole-object file) and for FILES files of 128 KiB read in a shuffled order by 4
# processes (a data loader's epoch), page cache dropped before each read (WARM=1: kept),
# ROUNDS rounds (default 5), the order turning each round.
# With WARM=1, also the small files through bindfs -o kernel_cache of the same folder
# (small_floor): a C FUSE server whose files stay in the page cache across opens, so that no
# byte crosses /dev/fuse either, and each file costs only its OPEN and RELEASE round trips,
# as a passed-through one does: the most any FUSE mount can do for this loader here.
# Prints each round's MB/s and the medians. Root only (drops the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (drops the page cache)" >&2; exit 1; }
ROUNDS=${ROUNDS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-2000}
work=$(mktemp -d /tmp/cachefs-bench-pt.XXXXXX)
cleanup() {
  for m in "$work/pt" "$work/nopt" "$work/floor"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/data/small" "$work/pt" "$work/nopt" "$work/floor"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/data/big.bin"
for i in $(seq 1 "$FILES"); do head -c 131072 /dev/urandom > "$work/data/small/f$i"; done

mount_one() { # dir cache-dir extra-flags...
  local dir=$1 cache=$2; shift 2
  node bin/cachefs mount "$dir" --ufs "file://$work/data" --cache-dir "$cache" --cache-size 8GiB --log-level warn "$@"
}
if [ "${WARM:-0}" = 1 ]; then
  bash scripts/setup.sh bindfs
  bindfs -o ro,kernel_cache "$work/data" "$work/floor"
fi
PORT=${PORT:-19791}
mount_one "$work/pt" "$work/c-pt" --metrics-port "$PORT" --metrics-host 127.0.0.1
mount_one "$work/nopt" "$work/c-nopt" --no-passthrough --metrics-port $((PORT + 1)) --metrics-host 127.0.0.1
# Cache every block in both mounts (the first open of each file reads through cachefs).
for m in pt nopt; do
  cat "$work/$m/big.bin" > /dev/null
  find "$work/$m/small" -type f -print0 | xargs -0 -P4 -n 100 cat > /dev/null
done
tier=$(find "$work/c-pt" -mindepth 1 -maxdepth 1 -type d | head -1)
small_blocks="$work/small-blocks"
# The last blocks are stored after their readers have them.
for _ in $(seq 1 60); do
  find "$tier/blocks" -type f -size -1024k > "$small_blocks"
  [ "$(wc -l < "$small_blocks")" -eq "$FILES" ] && break
  sleep 1
done
[ "$(wc -l < "$small_blocks")" -eq "$FILES" ] || { echo "bench: expected $FILES small block files in $tier" >&2; exit 1; }
shuf --random-source=<(yes) "$small_blocks" > "$small_blocks.shuffled"
(cd "$work/data/small" && ls) | shuf --random-source=<(yes) > "$work/small-names"
# One epoch more, as a loader's second: the first opens of cached files register their backings.
for m in pt nopt; do (cd "$work/$m/small" && xargs -a "$work/small-names" -P4 -n 100 cat > /dev/null); done
[ "${WARM:-0}" = 1 ] && (cd "$work/floor/small" && xargs -a "$work/small-names" -P4 -n 100 cat > /dev/null)
# The big file's whole-object file, assembled in the background once its last block is in.
for _ in $(seq 1 120); do
  big_block=$(find "$tier/blocks" -type f -size "$((SIZE_MIB * 1024))k" | head -1)
  [ -n "$big_block" ] && break
  sleep 1
done
[ -n "$big_block" ] || { echo "bench: no whole-object file of big.bin in $tier" >&2; exit 1; }

seconds() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
mbps() { echo "scale=0; $1 / 1000000 / $2" | bc -l; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
read_big() { cat "$1" > /dev/null; }
read_small_dir() { (cd "$1" && xargs -a "$work/small-names" -P4 -n 100 cat > /dev/null); }
read_small_list() { xargs -a "$1" -P4 -n 100 cat > /dev/null; }

big_bytes=$((SIZE_MIB * 1024 * 1024))
small_bytes=$((FILES * 131072))
declare -A results
load_before=$(cat /proc/loadavg)
read_one() { # kind method
  case "$1/$2" in
    big/pt) read_big "$work/pt/big.bin" ;;
    big/nopt) read_big "$work/nopt/big.bin" ;;
    big/tier) read_big "$big_block" ;;
    small/pt) read_small_dir "$work/pt/small" ;;
    small/nopt) read_small_dir "$work/nopt/small" ;;
    small/tier) read_small_list "$small_blocks.shuffled" ;;
    small/floor) read_small_dir "$work/floor/small" ;;
  esac
}
methods=(pt nopt tier)
for r in $(seq 1 "$ROUNDS"); do
  for kind in big small; do
    bytes=$big_bytes
    [ "$kind" = small ] && bytes=$small_bytes
    # The order turns each round: the first read after a drop tends to pay for the drop's writeback.
    for i in 0 1 2; do
      m=${methods[$(((i + r) % 3))]}
      [ "${WARM:-0}" = 1 ] || drop
      results[${kind}_$m]+="$(mbps "$bytes" "$(seconds read_one "$kind" "$m")") "
    done
    [ "$kind" = small ] && [ "${WARM:-0}" = 1 ] && results[small_floor]+="$(mbps "$bytes" "$(seconds read_one small floor)") "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "load average before: $load_before; after: $(cat /proc/loadavg)"
for k in big_pt big_nopt big_tier small_pt small_nopt small_tier small_floor; do
  [ -n "${results[$k]:-}" ] || continue
  printf '%-11s median %6s MB/s   rounds: %s\n' "$k" "$(echo "${results[$k]}" | median)" "${results[$k]}"
done
echo "opens passed through by the passthrough mount: $(curl -s "127.0.0.1:$PORT/metrics" | awk '/^cachefs_fuse_passthrough_opens_total/ {print $2}')"
echo "bytes the no-passthrough mount answered: $(curl -s "127.0.0.1:$((PORT + 1))/metrics" | awk '/^cachefs_fuse_read_bytes_total/ {print $2}')"
