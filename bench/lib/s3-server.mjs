// Starts s3rver on 127.0.0.1 for benchmarks, creates the bucket and uploads the
// given files (flat keys: the file names). Prints "PORT <n>" once ready and runs
// until killed. Usage: node s3-server.mjs DIR BUCKET FILE...
import { createReadStream, statSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const [dir, bucket, ...files] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir });
const { port } = await server.run();
const client = new S3Client({
  endpoint: `http://127.0.0.1:${port}`,
  region: 'us-east-1',
  forcePathStyle: true,
  credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});
await client.send(new CreateBucketCommand({ Bucket: bucket })).catch(() => undefined);
for (const file of files) {
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: path.basename(file), Body: createReadStream(file), ContentLength: statSync(file).size }));
}
process.stdout.write(`PORT ${port}\n`);
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
