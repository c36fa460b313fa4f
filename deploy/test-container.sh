#!/usr/bin/env bash
# Container test of the image (deploy/build-rootfs.sh builds it as localhost/cachefs:dev):
# a privileged sidecar container serves an embedded-cache mount of a local S3 server on a
# bind-mounted host dir with rshared propagation; an application container of the same
# image sees it through an rslave bind and reads it byte-exact (sha256) - at first, after
# the sidecar's serving process is killed (its supervisor heals the mount), and after the
# whole sidecar container is killed and started again (a crash: cachefs mount finds the
# dead FUSE mount of its previous life on the path).
# Everything it starts it stops (containers by id, processes by PID, mounts unmounted),
# also on failure. Prints one PASS/FAIL line per step and a summary; exits 1 on a FAIL.
# Usage: deploy/test-container.sh [IMAGE]   (root; podman, runc; from anywhere)
set -uo pipefail
image=${1:-localhost/cachefs:dev}
repo=$(cd "$(dirname "$0")/.." && pwd)
pod=(podman --runtime runc --cgroup-manager cgroupfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
work=$(mktemp -d /tmp/cachefs-ctest.XXXXXX)
host=$work/host
mnt=/mnt/shared/data
containers=() pids=() passed=0 failed=0

cleanup() {
  for c in "${containers[@]}"; do "${pod[@]}" rm -f -t 5 "$c" >/dev/null 2>&1; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  # The FUSE mount (possibly dead) below the shared dir, then the shared bind itself.
  umount -l "$host/data" 2>/dev/null
  umount -l "$host" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { # step NAME COMMAND...: runs it, prints PASS/FAIL NAME
  if "${@:2}"; then echo "PASS $1"; passed=$((passed + 1)); else echo "FAIL $1"; failed=$((failed + 1)); return 1; fi
}
# mounted_fuse DIR: DIR is a live cachefs mount as the host sees it. statfs, not stat: the
# kernel may answer stat of a dead mount's root from its attribute cache; statfs always
# asks the serving process (ENOTCONN when the connection is gone).
mounted_fuse() { [ "$(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null | tail -1)" = fuse.cachefs ] && stat -f "$1" >/dev/null 2>&1; }
wait_for() { # wait_for SECONDS COMMAND...
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}
# app_reads: the application container reads every file byte-exact (a fresh open each time:
# FUSE asks the serving process, so a dead mount fails here even where its attributes
# are still cached). Quiet while retried; `app_reads verbose` says why it failed.
app_reads() {
  local got
  got=$("${pod[@]}" exec "$app" sh -c "cd $mnt && sha256sum big.bin small.txt nested/deep.bin" 2>&1) || {
    [ "${1:-}" = verbose ] && echo "$got" | sed 's/^/  app: /'; return 1; }
  [ "$got" = "$(cat "$work/expected")" ] || { [ "${1:-}" = verbose ] && echo "$got" | sed 's/^/  app: /'; return 1; }
}
# serving_pid: host PID of the sidecar's serving process (the supervisor's child, --supervised).
serving_pid() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -q -- "mount $mnt .*--supervised" && { echo "${p#/proc/}"; return 0; }
  done
  return 1
}
# sidecar_serves: the sidecar container runs, with a serving process, and its mount is live,
# still so 2 s later (a serving process that is about to fail its start has a pid too).
sidecar_serves() {
  local i
  for i in 1 2; do
    [ "$("${pod[@]}" inspect -f '{{.State.Status}}' "$sidecar" 2>/dev/null)" = running ] && serving_pid >/dev/null && mounted_fuse "$host/data" || return 1
    [ "$i" = 2 ] || sleep 2
  done
}
sidecar_logs() { "${pod[@]}" logs --tail 15 "$sidecar" 2>&1 | sed 's/^/  sidecar: /'; }

"${pod[@]}" image exists "$image" || { echo "FAIL no image $image: run deploy/build-rootfs.sh" >&2; exit 1; }

# The "hostPath": a host dir made a shared mount, so mounts below it propagate.
mkdir -p "$host/data" "$work/data/nested"
mount --bind "$host" "$host" && mount --make-rshared "$host" || { echo "FAIL shared bind of $host"; exit 1; }
head -c $((24 * 1024 * 1024 + 12345)) /dev/urandom > "$work/data/big.bin"
echo "hello from the object store" > "$work/data/small.txt"
head -c 1000000 /dev/urandom > "$work/data/nested/deep.bin"
(cd "$work/data" && sha256sum big.bin small.txt nested/deep.bin) > "$work/expected"

# The S3 server (s3rver behind the tests' wrapper), as the benches start it.
(cd "$repo" && node_modules/.bin/tsc -p tsconfig.bench.json) || { echo "FAIL building dist-bench"; exit 1; }
node "$repo/bench/lib/s3-server.mjs" data --tree "$work/data" > "$work/s3.out" 2>&1 &
pids+=($!)
wait_for 120 grep -qs PORT "$work/s3.out" || { echo "FAIL s3 server did not start"; cat "$work/s3.out"; exit 1; }
s3port=$(awk '/PORT/ {print $2}' "$work/s3.out")

sidecar=$("${pod[@]}" run -d --privileged --network host "${limits[@]}" \
  -e AWS_ACCESS_KEY_ID=S3RVER -e AWS_SECRET_ACCESS_KEY=S3RVER -e AWS_REGION=us-east-1 \
  -v "$host:/mnt/shared:rshared" "$image" \
  mount "$mnt" --foreground --ufs s3://data --s3-endpoint "http://127.0.0.1:$s3port" \
  --cache-dir /var/cache/cachefs --cache-size 1GiB --allow-other) || { echo "FAIL sidecar did not start"; exit 1; }
containers+=("$sidecar")
step "sidecar mount propagates to the host (rshared)" wait_for 60 mounted_fuse "$host/data" || { sidecar_logs; exit 1; }

app=$("${pod[@]}" run -d --network none "${limits[@]}" -v "$host:/mnt/shared:rslave" \
  --entrypoint sh "$image" -c 'exec sleep infinity') || { echo "FAIL app container did not start"; exit 1; }
containers+=("$app")
step "app container reads byte-exact (rslave)" app_reads || app_reads verbose

victim=$(serving_pid)
if [ -n "$victim" ]; then
  kill -9 "$victim"
  echo "  killed serving process $victim"
  sleep 1
  step "app reads byte-exact after the serving process was killed (supervisor heals)" wait_for 60 app_reads || app_reads verbose
  step "a new serving process runs" wait_for 30 bash -c "$(declare -f serving_pid); mnt=$mnt; p=\$(serving_pid) && [ \"\$p\" != $victim ]"
else
  step "found the sidecar's serving process" false
fi

"${pod[@]}" kill -s KILL "$sidecar" >/dev/null
"${pod[@]}" wait "$sidecar" >/dev/null 2>&1
# What a new mount on the path will find: the dead mount of the killed container. Its root's
# attributes may still be cached by the kernel (stat answers), statfs always asks the server.
echo "  sidecar container killed (SIGKILL); on the host: stat $(stat -c %F "$host/data" 2>&1 | sed 's/.*: //'), statfs $(stat -f -c %T "$host/data" 2>&1 | sed 's/.*: //')"
echo "  starting the sidecar container again"
"${pod[@]}" start "$sidecar" >/dev/null
if step "restarted sidecar serves again" wait_for 60 sidecar_serves; then
  step "app reads byte-exact after the sidecar container restarted" wait_for 30 app_reads || app_reads verbose
else
  echo "  sidecar state: $("${pod[@]}" inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$sidecar")"
  sidecar_logs
  step "app reads byte-exact after the sidecar container restarted" app_reads verbose
  # Not counted: what the restart gives once the dead mount is out of the way (what
  # `cachefs mount` is to do itself), to tell a refused mount from a propagation problem.
  umount -l "$host/data"
  "${pod[@]}" start "$sidecar" >/dev/null
  if wait_for 60 sidecar_serves && wait_for 30 app_reads; then
    echo "INFO with the dead mount unmounted by hand, the restarted sidecar serves and the app reads byte-exact"
  else
    echo "INFO with the dead mount unmounted by hand, the restarted sidecar still does not serve the app"; app_reads verbose
  fi
fi

echo "SUMMARY: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
