# Starts a benchmark cluster on 127.0.0.1: s3rver (start_s3) with the given files in bucket
# `bench`, a master with the mount-table entry /bench -> s3://bench, and one worker
# in cache group `bench` whose socket dir is $work/sock. The cluster has a secret: a
# token file $work/token (0600), exported as CACHEFS_AUTH_TOKEN_FILE so that every
# cachefs command of the script presents it. Sourced after common.sh; needs $work and
# the pids array; sets s3port, mport, tier, sockdir, worker_pid.

# free_port: a TCP port free on 127.0.0.1 right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_worker: (re)starts the bench worker on an empty tier; sets worker_pid.
start_worker() {
  if [ -n "${worker_pid:-}" ]; then kill "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
  rm -rf "$tier" "$sockdir"
  node bin/cachefs worker --master "127.0.0.1:$mport" --cache-group bench --id bench-worker --host 127.0.0.1 --port "$wport" \
    --tier "SSD:$tier:4GiB" --state-dir "$work/wstate" --domain-socket-dir "$sockdir" --log-level info >>"$work/worker.log" 2>&1 &
  worker_pid=$!
  pids+=($worker_pid)
  for _ in $(seq 100); do ls "$sockdir" 2>/dev/null | grep -q . && break; sleep 0.1; done
  sleep 2.5 # mounts refresh the worker list every 2 s
}

start_bench_cluster() {
  start_s3 "$@"
  (umask 077 && openssl rand -hex 32 > "$work/token")
  export CACHEFS_AUTH_TOKEN_FILE="$work/token"
  mport=$(free_port)
  node bin/cachefs master --meta-dir "$work/meta" --host 127.0.0.1 --port "$mport" --log-level info >"$work/master.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do node bin/cachefs mount-table list --master "127.0.0.1:$mport" >/dev/null 2>&1 && break; sleep 0.1; done
  node bin/cachefs mount-table add /bench s3://bench --master "127.0.0.1:$mport" \
    --option "s3.endpoint=http://127.0.0.1:$s3port" --option s3.accessKeyId=S3RVER --option s3.secretAccessKey=S3RVER >/dev/null
  tier="$work/tier"; sockdir="$work/sock"
  wport=$(free_port)
  start_worker
}
