/**
 * The cluster secret (`net/auth.ts`) and the sealing of secret options at rest
 * (`master/secret-box.ts`): which token files are taken and which refused, the
 * header check, the derived keys, and sealed values that open only with the same
 * secret, for the same place, untouched.
 */
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SecretBox } from '../src/master/secret-box.js';
import { ClusterSecret } from '../src/net/auth.js';

const TOKEN = '5f0c8a7e2b9d41c6a3e8f7d2c1b0a9e8';
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-secret-'));
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function tokenFile(name: string, content: string, mode: number): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, content, { mode });
  await chmod(file, mode);
  return file;
}

describe('ClusterSecret.fromFile', () => {
  it('takes a token file its owner (and group) alone may read, trimmed, through symlinks as in a Kubernetes Secret volume', async () => {
    const secret = ClusterSecret.fromFile(await tokenFile('t600', `${TOKEN}\n`, 0o600));
    expect(secret.authorization).toBe(`Bearer ${TOKEN}`);
    expect(ClusterSecret.fromFile(await tokenFile('t440', TOKEN, 0o440)).authorization).toBe(`Bearer ${TOKEN}`);
    await mkdir(path.join(dir, '..data'));
    await tokenFile('..data/token', TOKEN, 0o440);
    await symlink('..data/token', path.join(dir, 'linked'));
    expect(ClusterSecret.fromFile(path.join(dir, 'linked')).authorization).toBe(`Bearer ${TOKEN}`);
  });

  it.each([
    ['readable by others (0644)', () => tokenFile('t644', TOKEN, 0o644), /other users may access it \(mode 0644\); expected 0600 or 0640/],
    ['writable by others (0602)', () => tokenFile('t602', TOKEN, 0o602), /other users may access it \(mode 0602\)/],
    ['a link to an open file', async () => { await tokenFile('open', TOKEN, 0o644); await symlink('open', path.join(dir, 'to-open')); return path.join(dir, 'to-open'); }, /mode 0644/],
    ['too short', () => tokenFile('short', 'hunter2\n', 0o600), /7 characters, expected at least 16/],
    ['with spaces', () => tokenFile('spaces', 'correct horse battery staple', 0o600), /expected visible ASCII characters without spaces/],
    ['empty', () => tokenFile('empty', '\n', 0o600), /expected visible ASCII/],
    ['too long', () => tokenFile('long', 'x'.repeat(5000), 0o600), /5000 bytes, expected at most 4096/],
    ['a directory', async () => dir, /not a regular file/],
    ['missing', async () => path.join(dir, 'nothing'), /cannot open it \(ENOENT\)/],
  ])('refuses a token file that is %s', async (_what, make, message) => {
    const file = await make();
    expect(() => ClusterSecret.fromFile(file)).toThrow(message);
    try {
      ClusterSecret.fromFile(file);
    } catch (err) {
      expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^invalid --auth-token-file '/) });
    }
  });
});

describe('ClusterSecret', () => {
  const secret = ClusterSecret.of(TOKEN);

  it('accepts exactly its own bearer token', () => {
    expect(secret.accepts(`Bearer ${TOKEN}`)).toBe(true);
    expect(secret.accepts(`bearer ${TOKEN}`)).toBe(true);
    for (const header of [undefined, '', 'Bearer', `Bearer ${TOKEN.slice(0, -1)}`, `Bearer ${TOKEN}x`, `Bearer x${TOKEN}`, TOKEN, `Basic ${TOKEN}`, `Bearer ${TOKEN} ${TOKEN}`, [`Bearer ${TOKEN}`]]) {
      expect(secret.accepts(header), String(header)).toBe(false);
    }
  });

  it('never shows its token when inspected, serialized or logged', () => {
    for (const text of [inspect(secret, { showHidden: true, depth: 5 }), JSON.stringify(secret), JSON.stringify({ secret }), String(secret)]) expect(text).not.toContain(TOKEN);
  });

  it('derives a 256-bit key per purpose, the same for the same secret', () => {
    const key = secret.deriveKey('a');
    expect(key).toHaveLength(32);
    expect(ClusterSecret.of(TOKEN).deriveKey('a').equals(key)).toBe(true);
    expect(secret.deriveKey('b').equals(key)).toBe(false);
    expect(ClusterSecret.of(`${TOKEN}0`).deriveKey('a').equals(key)).toBe(false);
  });
});

describe('SecretBox', () => {
  const box = new SecretBox(ClusterSecret.of(TOKEN));
  const place = 'mount-table entry /data option s3.secretAccessKey';

  it('seals a value with a fresh nonce each time and opens it again', () => {
    const a = box.seal('wJalrXUtnFEMI/K7MDENG', place);
    const b = box.seal('wJalrXUtnFEMI/K7MDENG', place);
    expect(a).toMatch(/^v1:[A-Za-z0-9_-]{16}:[A-Za-z0-9_-]+$/);
    expect(a).not.toBe(b);
    expect(a).not.toContain('wJalrXUtnFEMI');
    expect(box.open(a, place)).toBe('wJalrXUtnFEMI/K7MDENG');
    expect(new SecretBox(ClusterSecret.of(TOKEN)).open(b, place)).toBe('wJalrXUtnFEMI/K7MDENG');
  });

  it('opens nothing sealed under another secret, for another place, or changed', () => {
    const sealed = box.seal('value', place);
    expect(() => new SecretBox(ClusterSecret.of(`${TOKEN}-other`)).open(sealed, place)).toThrow(/does not open with this cluster secret/);
    expect(() => box.open(sealed, 'mount-table entry /other option s3.secretAccessKey')).toThrow(/does not open/);
    const [v, nonce, body] = sealed.split(':') as [string, string, string];
    const flipped = Buffer.from(body, 'base64url');
    flipped[0] = flipped[0]! ^ 1;
    expect(() => box.open(`${v}:${nonce}:${flipped.toString('base64url')}`, place)).toThrow(/does not open/);
    for (const bad of ['value', 'v2:x:y', `v1:${nonce}`, `v1:${nonce}:${body}:extra`]) expect(() => box.open(bad, place)).toThrow(/not in the v1 format/);
  });
});
