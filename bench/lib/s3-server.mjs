// Starts an S3 protocol server on 127.0.0.1 for benchmarks: s3rver behind the tests'
// listing fix (test/support/s3-server.ts, built into dist-bench/ by start_s3), creates
// the bucket and uploads the given files (keys: their names) and trees (`--tree ROOT`:
// every file below ROOT, keyed by its path below ROOT), 32 at a time. Prints
// "PORT <n>" once ready and runs until killed; its store is deleted on exit. On SIGUSR2
// it prints the requests received since the last SIGUSR2 (or the end of the uploads) as
// one line, `REQUESTS {"GET 4MiB":256,"LIST":3,...}` (method and ranged-GET size; LIST for a
// ListObjectsV2), and forgets them.
// Once the uploads are in, it answers like a distant store if asked to (the uploads go at
// full speed): S3_FIRST_BYTE_MS (default 0) delays every request (GET, HEAD, listing)
// before it is handled, and S3_CONNECTION_MBPS (default: no cap) paces each connection's
// response bytes to that many MB/s (10^6 bytes), by timers, without busy work.
// Usage: node s3-server.mjs BUCKET [FILE | --tree ROOT]...
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startS3Server } from '../../dist-bench/s3-server.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const [bucket, ...rest] = process.argv.slice(2);
const files = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--tree') {
    const root = rest[++i];
    for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) {
      if (e.isFile()) files.push({ root, file: path.join(e.parentPath, e.name) });
    }
  } else files.push({ root: path.dirname(rest[i]), file: rest[i] });
}
const server = await startS3Server({ buckets: [bucket] });
// Its store is deleted when it is stopped, also while it uploads (a bench that gave up waiting).
let stopping = false;
const stop = () => {
  stopping = true;
  server.close().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// Read lazily: putObjects pulls the next file only when one of its 32 uploads is free.
function* objects() {
  for (const { root, file } of files) yield { key: path.relative(root, file), body: readFileSync(file) };
}
// Stopped meanwhile: the uploads fail, and the store is being deleted before the exit.
await server.putObjects(bucket, objects(), { concurrency: 32 }).catch((err) => (stopping ? new Promise(() => {}) : Promise.reject(err)));
server.clearRequestLog();
const firstByteMs = Number(process.env.S3_FIRST_BYTE_MS || 0);
const mbps = process.env.S3_CONNECTION_MBPS ? Number(process.env.S3_CONNECTION_MBPS) : undefined;
if (firstByteMs > 0 || mbps !== undefined) {
  server.shapeResponses({ firstByteMs, connectionBytesPerSecond: mbps === undefined ? undefined : mbps * 1e6 });
}
// The request log is folded into counts every second: a long benchmark's log would
// otherwise grow the server's heap, and its garbage collection, as the run goes on.
let counts = {};
const fold = () => {
  for (const r of server.requestLog()) {
    const range = /bytes=(\d+)-(\d+)/.exec(r.range ?? '');
    const list = r.method === 'GET' && r.key === '' && r.query.has('list-type');
    const kind = range ? `${r.method} ${+((Number(range[2]) - Number(range[1]) + 1) / 1048576).toFixed(1)}MiB` : list ? 'LIST' : r.method;
    counts[kind] = (counts[kind] ?? 0) + 1;
  }
  server.clearRequestLog();
};
setInterval(fold, 1000).unref();
process.on('SIGUSR2', () => {
  fold();
  process.stdout.write(`REQUESTS ${JSON.stringify(counts)}\n`);
  counts = {};
});
process.stdout.write(`PORT ${server.port}\n`);

