// Starts an S3 protocol server on 127.0.0.1 for benchmarks: s3rver behind the tests'
// listing fix (test/support/s3-server.ts, built into dist-bench/ by start_s3), creates
// the bucket and uploads the given files (keys: their names) and trees (`--tree ROOT`:
// every file below ROOT, keyed by its path below ROOT), 32 at a time. Prints
// "PORT <n>" once ready and runs until killed; its store is deleted on exit.
// Usage: node s3-server.mjs BUCKET [FILE | --tree ROOT]...
import { createReadStream, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startS3Server } from '../../dist-bench/s3-server.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const [bucket, ...rest] = process.argv.slice(2);
const uploads = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--tree') {
    const root = rest[++i];
    for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) {
      if (e.isFile()) {
        const file = path.join(e.parentPath, e.name);
        uploads.push({ key: path.relative(root, file), file });
      }
    }
  } else uploads.push({ key: path.basename(rest[i]), file: rest[i] });
}
const server = await startS3Server({ buckets: [bucket] });
const client = server.client();
let next = 0;
await Promise.all(
  Array.from({ length: 32 }, async () => {
    while (next < uploads.length) {
      const { key, file } = uploads[next++];
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: createReadStream(file), ContentLength: statSync(file).size }));
    }
  }),
);
server.clearRequestLog();
process.stdout.write(`PORT ${server.port}\n`);
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
