// Starts an S3 protocol server on 127.0.0.1 for benchmarks: s3rver behind the tests'
// listing fix (test/support/s3-server.ts, built into dist-bench/ by start_s3), creates
// the bucket and uploads the given files (keys: their names) and trees (`--tree ROOT`:
// every file below ROOT, keyed by its path below ROOT), 32 at a time. Prints
// "PORT <n>" once ready and runs until killed; its store is deleted on exit.
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
// Read lazily: putObjects pulls the next file only when one of its 32 uploads is free.
function* objects() {
  for (const { root, file } of files) yield { key: path.relative(root, file), body: readFileSync(file) };
}
await server.putObjects(bucket, objects(), { concurrency: 32 });
server.clearRequestLog();
process.stdout.write(`PORT ${server.port}\n`);
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
