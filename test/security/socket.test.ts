/**
 * The worker's Unix socket, tried as a local attacker would (finding 4): the socket is
 * 0660 in a 0750 dir of --domain-socket-group, so another user cannot connect; a caller
 * that cannot answer the challenge with the cluster secret gets nothing, not even a
 * path; the block files are 0600 in 0700 dirs of the worker's own (mounts get their
 * descriptors), or, where it hands out paths (--pass-descriptors off), 0640 in 0750 dirs
 * of the same group; one connection cannot pin the tier full (the rest are served unpinned); and a
 * descriptor channel gets descriptors (read-only ones) only once an authenticated
 * connection claims it, and nothing but the challenge otherwise.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterSecret } from '../../src/net/auth.js';
import { encodeFrame, FrameReader, type SocketAnswer, type SocketChallenge, type SocketRequest } from '../../src/net/socket-protocol.js';
import { loadFdPassing } from '../../src/sys/fd-passing.js';
import { NAMESPACE_MOUNT_ID } from '../../src/ufs/namespace.js';
import { sh } from '../support/cachefs.js';
import { addMountEntry, CLUSTER_TOKEN_FILE, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';
import { startS3Server, type S3TestServer } from '../support/s3-server.js';

/** daemon (gid 1): a group of every Debian system that neither root's nor nobody's is. */
const GROUP = 1;
const OBJECTS = 260;
const body = (i: number): Buffer => Buffer.from(`object ${i}\n`);

let s3: S3TestServer;
let master: ServiceProcess;
let worker: ServiceProcess & { tierDir: string };
/** A worker that passes no descriptors: its mounts read block files by path. */
let pathWorker: ServiceProcess & { tierDir: string };
let work: string;
let socketPath: string;
let pathSocketPath: string;
const etags: string[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sock-'));
  s3 = await startS3Server({ buckets: ['data'] });
  for (let i = 0; i < OBJECTS; i++) etags.push(await s3.putObject('data', `o${i}`, body(i)));
  master = await startMaster();
  await addMountEntry(master.address, '/data', 's3://data', [`s3.endpoint=${s3.endpoint}`, 's3.accessKeyId=S3RVER', 's3.secretAccessKey=S3RVER']);
  const socketDir = path.join(work, 'run', 'cachefs');
  worker = await startWorker({ master: master.address, socketDir, blockSize: '1MiB', args: ['--domain-socket-group', String(GROUP)] });
  const [name] = await readdir(socketDir);
  socketPath = path.join(socketDir, name!);
  const pathSocketDir = path.join(work, 'run', 'paths');
  pathWorker = await startWorker({ master: master.address, cacheGroup: 'paths', socketDir: pathSocketDir, blockSize: '1MiB', args: ['--domain-socket-group', String(GROUP), '--pass-descriptors', 'off'] });
  pathSocketPath = path.join(pathSocketDir, (await readdir(pathSocketDir))[0]!);
}, 120_000);

afterAll(async () => {
  await stopAllServices();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A raw connection to the worker's socket: its challenge, and requests answered in order. */
async function connect(to = socketPath): Promise<{ challenge: string; call(req: SocketRequest): Promise<SocketAnswer>; closed: Promise<void>; socket: Socket }> {
  const socket = createConnection(to);
  const waiting = new Map<number, (a: SocketAnswer) => void>();
  let gotChallenge!: (c: string) => void;
  const challenge = new Promise<string>((r) => (gotChallenge = r));
  const reader = new FrameReader<SocketAnswer | SocketChallenge>(
    (a) => ('ok' in a && a.ok && typeof a.bytes === 'number' ? a.bytes : 0),
    (frame) => {
      if ('challenge' in frame) return gotChallenge(frame.challenge);
      waiting.get(frame.seq)?.(frame);
    },
  );
  socket.on('data', (chunk: Buffer) => reader.push(chunk));
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  socket.on('error', () => undefined);
  const call = (req: SocketRequest): Promise<SocketAnswer> =>
    new Promise((resolve, reject) => {
      waiting.set(req.seq, resolve);
      for (const part of encodeFrame(req)) socket.write(part);
      void closed.then(() => reject(new Error('connection closed')));
    });
  return { challenge: await challenge, call, closed, socket };
}

const block = (i: number) => ({ mount: NAMESPACE_MOUNT_ID, key: `data/o${i}`, etag: etags[i]!, size: body(i).length, bs: 1024 * 1024, index: 0 });

describe('the worker socket', () => {
  it('is 0660 in a 0750 dir of --domain-socket-group, and another user cannot connect', async () => {
    const dir = await stat(path.dirname(socketPath));
    expect(dir.mode & 0o777).toBe(0o750);
    expect(dir.gid).toBe(GROUP);
    const sock = await stat(socketPath);
    expect(sock.mode & 0o777).toBe(0o660);
    expect(sock.gid).toBe(GROUP);
    // nobody (not in the group) cannot even reach it.
    const r = await sh(`setpriv --reuid=65534 --regid=65534 --clear-groups python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("${socketPath}")' 2>&1; echo "exit=$?"`);
    expect(r.stdout).toMatch(/Permission denied/);
    expect(r.stdout).toMatch(/exit=1/);
  });

  it('answers nothing to a caller without the cluster secret, and closes the connection', async () => {
    const c = await connect();
    // A request without the hello first: refused, no bytes, no path.
    const refused = await c.call({ seq: 1, op: 'read', block: block(0), offset: 0, length: 5 });
    expect(refused).toMatchObject({ ok: false, code: 'UNAUTHENTICATED' });
    await c.closed;
    // A hello with a proof made with another secret: refused as well.
    const d = await connect();
    const wrong = ClusterSecret.of(randomBytes(32).toString('hex')).proof(d.challenge);
    expect(await d.call({ seq: 1, op: 'hello', proof: wrong })).toMatchObject({ ok: false, code: 'UNAUTHENTICATED' });
    await d.closed;
    // The same secret's proof for another challenge (a replay) does not pass either.
    const e = await connect();
    const replayed = ClusterSecret.fromFile(CLUSTER_TOKEN_FILE).proof(d.challenge);
    expect(await e.call({ seq: 1, op: 'hello', proof: replayed })).toMatchObject({ ok: false, code: 'UNAUTHENTICATED' });
    await e.closed;
  });

  it('passing descriptors, keeps its block files 0600 in 0700 dirs: not even the group reads them', async () => {
    const c = await connect();
    expect(await c.call({ seq: 1, op: 'hello', proof: ClusterSecret.fromFile(CLUSTER_TOKEN_FILE).proof(c.challenge) })).toMatchObject({ ok: true });
    // Asked without `fd`, it answers the path (for root's mounts whose koffi cannot load).
    const file = (await c.call({ seq: 2, op: 'open', block: block(0) })).path!;
    expect(file.startsWith(worker.tierDir)).toBe(true);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(file))).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(worker.tierDir, 'blocks'))).mode & 0o777).toBe(0o700);
    const r = await sh(`setpriv --reuid=65534 --regid=${GROUP} --clear-groups cat ${file} 2>&1; echo "exit=$?"`);
    expect(r.stdout).toMatch(/Permission denied/);
    c.socket.destroy();
  });

  it('with --pass-descriptors off, hands out paths of 0640 block files in 0750 dirs of the group, which another user cannot read', async () => {
    const c = await connect(pathSocketPath);
    expect(await c.call({ seq: 1, op: 'hello', proof: ClusterSecret.fromFile(CLUSTER_TOKEN_FILE).proof(c.challenge) })).toMatchObject({ ok: true });
    const opened = await c.call({ seq: 2, op: 'open', block: block(0) });
    expect(opened).toMatchObject({ ok: true, length: body(0).length });
    const file = opened.path!;
    expect(file.startsWith(pathWorker.tierDir)).toBe(true);
    const st = await stat(file);
    expect(st.mode & 0o777).toBe(0o640);
    expect(st.gid).toBe(GROUP);
    expect((await stat(path.dirname(file))).mode & 0o777).toBe(0o750);
    expect((await stat(path.join(pathWorker.tierDir, 'blocks'))).mode & 0o777).toBe(0o750);
    const r = await sh(`setpriv --reuid=65534 --regid=65534 --clear-groups cat ${file} 2>&1; echo "exit=$?"`);
    expect(r.stdout).toMatch(/Permission denied/);
    expect(createHash('sha256').update(body(0)).digest('hex')).toBe((await sh(`sha256sum ${file} | cut -d' ' -f1`)).stdout.trim());
    c.socket.destroy();
  });

  it('lets one connection pin at most 256 blocks: the rest are answered without a path', async () => {
    const c = await connect();
    expect(await c.call({ seq: 1, op: 'hello', proof: ClusterSecret.fromFile(CLUSTER_TOKEN_FILE).proof(c.challenge) })).toMatchObject({ ok: true });
    const answers = await Promise.all(Array.from({ length: OBJECTS }, (_, i) => c.call({ seq: 2 + i, op: 'open', block: block(i) })));
    expect(answers.every((a) => a.ok)).toBe(true);
    expect(answers.filter((a) => a.path).length).toBe(256);
    expect((await worker.metrics()).value('cachefs_pinned_blocks')).toBe(256);
    // Reading a block it could not pin still works, over the socket.
    const unpinned = answers.findIndex((a) => !a.path);
    const read = await c.call({ seq: 1000, op: 'read', block: block(unpinned), offset: 0, length: body(unpinned).length });
    expect(read).toMatchObject({ ok: true, bytes: body(unpinned).length });
    c.socket.destroy();
    await c.closed;
  });
});

describe('descriptor channels', () => {
  const token = () => randomBytes(32).toString('hex');
  const attachFrame = (t: string): Buffer => Buffer.concat(encodeFrame({ seq: 0, op: 'attach', token: t }));

  it('a channel nobody claims gets its challenge and nothing else, and is closed', async () => {
    const ch = createConnection(socketPath);
    let got = 0;
    ch.on('data', (d: Buffer) => (got += d.length));
    ch.on('error', () => undefined);
    const closed = new Promise<number>((r) => ch.once('close', () => r(Date.now())));
    const t0 = Date.now();
    ch.write(attachFrame(token()));
    const at = await closed;
    expect(at - t0).toBeGreaterThanOrEqual(1500);
    // The challenge frame only: a 4-byte length and {"challenge":"<64 hex>"}.
    expect(got).toBe(4 + JSON.stringify({ challenge: 'x'.repeat(64) }).length);
  });

  it('an authenticated connection cannot claim a channel that never came, and the one it claims carries the block file descriptor', async () => {
    const c = await connect();
    expect(await c.call({ seq: 1, op: 'hello', proof: ClusterSecret.fromFile(CLUSTER_TOKEN_FILE).proof(c.challenge) })).toMatchObject({ ok: true });
    expect(await c.call({ seq: 2, op: 'attach', token: token() })).toMatchObject({ ok: false, code: 'TIMEOUT' });
    // Without a channel, an open that asks for a descriptor gets the path.
    expect(await c.call({ seq: 3, op: 'open', block: block(1), fd: true })).toMatchObject({ ok: true, path: expect.any(String) });
    const fds = await loadFdPassing();
    const t = token();
    const ch = fds.connect(socketPath);
    try {
      expect(fds.send(ch, attachFrame(t))).toBe(attachFrame(t).length);
      expect(await c.call({ seq: 4, op: 'attach', token: t })).toMatchObject({ ok: true });
      const opened = await c.call({ seq: 5, op: 'open', block: block(2), fd: true });
      expect(opened).toMatchObject({ ok: true, fd: true, length: body(2).length });
      expect(opened.path).toBeUndefined();
      // The channel: the challenge, then the record of answer 5 with the descriptor.
      let chunk = fds.receive(ch, 4);
      const length = 'data' in chunk ? chunk.data.readUInt32BE(0) : 0;
      chunk = fds.receive(ch, length);
      expect('data' in chunk && chunk.fd === undefined && chunk.data.toString()).toMatch(/^\{"challenge":"[0-9a-f]{64}"\}$/);
      chunk = fds.receive(ch, 4);
      if (!('data' in chunk) || chunk.fd === undefined) throw new Error(`no descriptor record: ${JSON.stringify(chunk)}`);
      expect(chunk.data.readUInt32BE(0)).toBe(5);
      try {
        const bytes = Buffer.alloc(body(2).length + 10);
        expect(readSync(chunk.fd, bytes, 0, bytes.length, 0)).toBe(body(2).length);
        expect(bytes.subarray(0, body(2).length).equals(body(2))).toBe(true);
        // Read-only: the block file cannot be written through it.
        expect(() => writeSync(chunk.fd!, 'x')).toThrow(/EBADF/);
      } finally {
        closeSync(chunk.fd);
      }
      expect((await worker.metrics()).value('cachefs_worker_passed_descriptors_total')).toBeGreaterThanOrEqual(1);
    } finally {
      fds.close(ch);
      c.socket.destroy();
    }
  });
});
