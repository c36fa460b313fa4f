// The S3 server's own ceiling for a dataset: every object under a prefix of a bucket
// GET straight from one client with no cache, THREADS (default 64) at a time, the bytes
// thrown away. Prints "CEILING <MB/s> <bytes> <objects> <seconds>".
// Usage: node s3-ceiling.mjs ENDPOINT BUCKET PREFIX [THREADS]
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Agent } from 'node:http';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const [endpoint, bucket, prefix, threadsText] = process.argv.slice(2);
const threads = Number(threadsText ?? 64);
const client = new S3Client({
  endpoint,
  region: 'us-east-1',
  forcePathStyle: true,
  credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
  requestHandler: new NodeHttpHandler({ httpAgent: new Agent({ keepAlive: true, maxSockets: threads }) }),
});
const keys = [];
let token;
do {
  const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
  for (const o of page.Contents ?? []) keys.push(o.Key);
  token = page.NextContinuationToken;
} while (token);
let next = 0;
let bytes = 0;
const t0 = process.hrtime.bigint();
await Promise.all(
  Array.from({ length: threads }, async () => {
    while (next < keys.length) {
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: keys[next++] }));
      for await (const chunk of res.Body) bytes += chunk.length;
    }
  }),
);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(`CEILING ${(bytes / seconds / 1e6).toFixed(1)} ${bytes} ${keys.length} ${seconds.toFixed(2)}\n`);
client.destroy();
