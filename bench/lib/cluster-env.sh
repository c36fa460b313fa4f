# Starts a benchmark cluster on 127.0.0.1: s3rver with the given files in bucket
# `bench`, a master with the mount-table entry /bench -> s3://bench, and one worker
# in cache group `bench` whose socket dir is $work/sock. Sourced after common.sh;
# needs $work and the pids array; sets s3port, mport, tier, sockdir.
start_bench_cluster() {
  node bench/lib/s3-server.mjs "$work/s3" bench "$@" > "$work/s3.out" &
  pids+=($!)
  for _ in $(seq 600); do grep -q PORT "$work/s3.out" 2>/dev/null && break; sleep 0.1; done
  s3port=$(awk '/PORT/ {print $2}' "$work/s3.out")
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  node bin/cachefs master --meta-dir "$work/meta" --host 127.0.0.1 --port "$mport" --log-level warn &
  pids+=($!)
  for _ in $(seq 100); do node bin/cachefs mount-table list --master "127.0.0.1:$mport" >/dev/null 2>&1 && break; sleep 0.1; done
  node bin/cachefs mount-table add /bench s3://bench --master "127.0.0.1:$mport" \
    --option "s3.endpoint=http://127.0.0.1:$s3port" --option s3.accessKeyId=S3RVER --option s3.secretAccessKey=S3RVER >/dev/null
  tier="$work/tier"; sockdir="$work/sock"
  node bin/cachefs worker --master "127.0.0.1:$mport" --cache-group bench --host 127.0.0.1 --port 0 \
    --tier "SSD:$tier:4GiB" --state-dir "$work/wstate" --domain-socket-dir "$sockdir" --log-level warn &
  pids+=($!)
  for _ in $(seq 100); do ls "$sockdir" 2>/dev/null | grep -q . && break; sleep 0.1; done
}
