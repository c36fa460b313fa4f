/**
 * S3 (and S3-compatible) backend, on @aws-sdk/client-s3. Options: `s3.endpoint`,
 * `s3.region`, `s3.pathStyle`, `s3.accessKeyId`/`s3.secretAccessKey`/`s3.sessionToken`
 * (otherwise the standard AWS chain: env, shared files). Connections are kept alive
 * and pooled; object bytes are received straight into the caller's buffer
 * (s3-get-handler.ts); checksums are only computed where S3 requires them so that any
 * S3-protocol server works.
 */
import { Agent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Scatter } from '../block/scatter.js';
import { CachefsError } from '../errors.js';
import { errorFacts, serviceError } from './service-errors.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsOptions, UfsReadOptions } from './ufs.js';
import type { UfsUri } from './uri.js';
import { S3GetHandler } from './s3-get-handler.js';
import { checkVersion, stripQuotes } from './sdk-call.js';

const CONNECT_TIMEOUT_MS = 3000;
const REQUEST_TIMEOUT_MS = 30_000;
const MAX_SOCKETS = 64;

export class S3Ufs implements Ufs {
  readonly displayUri: string;
  private readonly client: S3Client;
  private readonly gets: S3GetHandler;
  private readonly bucket: string;
  private readonly root: string;

  constructor(uri: UfsUri, options: UfsOptions) {
    this.displayUri = uri.text;
    this.bucket = uri.bucket;
    this.root = uri.root;
    const endpoint = options['s3.endpoint'];
    if (endpoint !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid s3.endpoint '${endpoint}': expected http(s)://host[:port]`);
    }
    const accessKeyId = options['s3.accessKeyId'];
    const secretAccessKey = options['s3.secretAccessKey'];
    const pathStyle = options['s3.pathStyle'];
    this.gets = new S3GetHandler(
      new NodeHttpHandler({
        connectionTimeout: CONNECT_TIMEOUT_MS,
        requestTimeout: REQUEST_TIMEOUT_MS,
        httpAgent: new Agent({ keepAlive: true, maxSockets: MAX_SOCKETS }),
        httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: MAX_SOCKETS }),
      }),
      MAX_SOCKETS,
      { connectMs: CONNECT_TIMEOUT_MS, headersMs: REQUEST_TIMEOUT_MS, bodyMs: REQUEST_TIMEOUT_MS },
    );
    this.client = new S3Client({
      region: options['s3.region'] ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      endpoint,
      forcePathStyle: pathStyle === undefined ? endpoint !== undefined : pathStyle === 'true',
      credentials: accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey, sessionToken: options['s3.sessionToken'] } : undefined,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 3,
      requestHandler: this.gets,
    });
    const config = this.client.config;
    this.gets.signWith({ signer: () => config.signer(), clockOffsetMs: () => config.systemClockOffset ?? 0 });
  }

  private where(key?: string): string {
    return key === undefined ? `s3://${this.bucket}` : `s3://${this.bucket}/${this.root}${key}`;
  }

  async check(signal?: AbortSignal): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal });
    } catch (err) {
      const facts = errorFacts(err);
      // HeadBucket has no body: a 404 means the bucket, not a key, is missing.
      if (facts.status === 404 || facts.code === 'NotFound') throw serviceError({ code: 'NoSuchBucket' }, this.where(), err);
      throw serviceError(facts, this.where(), err);
    }
  }

  async stat(key: string, signal?: AbortSignal): Promise<UfsObject | null> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.root + key }), { abortSignal: signal });
      return { key, size: head.ContentLength ?? 0, mtimeMs: head.LastModified?.getTime() ?? 0, etag: stripQuotes(head.ETag ?? '') };
    } catch (err) {
      const facts = errorFacts(err);
      if (facts.status === 404 || facts.code === 'NotFound' || facts.code === 'NoSuchKey') return null;
      throw serviceError(facts, this.where(key), err);
    }
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    try {
      const out = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.root + prefix,
          Delimiter: '/',
          ContinuationToken: options.token,
          MaxKeys: options.maxKeys,
        }),
        { abortSignal: options.signal },
      );
      const cut = this.root.length;
      return {
        objects: (out.Contents ?? []).map((o) => ({
          key: (o.Key ?? '').slice(cut),
          size: o.Size ?? 0,
          mtimeMs: o.LastModified?.getTime() ?? 0,
          etag: stripQuotes(o.ETag ?? ''),
        })),
        prefixes: (out.CommonPrefixes ?? []).map((p) => (p.Prefix ?? '').slice(cut)),
        nextToken: out.IsTruncated ? out.NextContinuationToken : undefined,
      };
    } catch (err) {
      throw serviceError(errorFacts(err), this.where(prefix), err);
    }
  }

  async readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options: UfsReadOptions = {}): Promise<number> {
    const { length } = new Scatter(dest);
    if (length === 0) return 0;
    const range = `bytes=${offset}-${offset + length - 1}`;
    const ifMatch = options.etag ? `"${options.etag}"` : undefined;
    const get = {
      key: this.root + key,
      onProgress: options.onProgress,
      signal: options.signal,
      accept: (headers: Readonly<Record<string, string>>) => checkVersion(options.etag, headers.etag, this.where(key)),
    };
    try {
      const short = await this.gets.get(get.key, { range, ifMatch }, dest, get);
      if (short !== undefined) return short;
      const command = new GetObjectCommand({ Bucket: this.bucket, Key: get.key, Range: range, IfMatch: ifMatch });
      return await S3GetHandler.into(dest, (abortSignal) => this.client.send(command, { abortSignal }), get);
    } catch (err) {
      if (err instanceof CachefsError) throw err;
      const facts = errorFacts(err);
      if (facts.status === 416) return 0; // range starts at or past the end
      throw serviceError(facts, this.where(key), err);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
