/**
 * A mount leaves nothing in shared dirs: its self-heal anchor lives under a private
 * runtime dir (/run/cachefs-anchors, 0700), not under /run/cachefs (the workers' default
 * socket dir, a shared hostPath), and is gone after a clean stop.
 */
import { stat } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ANCHOR_ROOT, MountAnchor } from '../src/heal/mount-anchor.js';
import { mountCachefs, stopAllMounts } from './support/cachefs.js';
import { isMounted, waitFor } from './support/processes.js';

let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-anchor-'));
});

afterAll(async () => {
  await stopAllMounts();
  await rm(work, { recursive: true, force: true });
});

it('keeps the anchor in a private runtime dir, outside the socket dir, and removes it on a clean stop', async () => {
  const mount = await mountCachefs({ ufs: `file://${work}` });
  const anchorDir = MountAnchor.dirFor(mount.mountpoint);
  try {
    expect(ANCHOR_ROOT).toBe('/run/cachefs-anchors');
    expect(anchorDir.startsWith(`${ANCHOR_ROOT}/`)).toBe(true);
    await waitFor(() => isMounted(path.join(anchorDir, 'mount')), { timeoutMs: 10_000 });
    expect((await stat(ANCHOR_ROOT)).mode & 0o777).toBe(0o700);
  } finally {
    await mount.stop();
  }
  expect(await isMounted(path.join(anchorDir, 'mount'))).toBe(false);
  await expect(stat(anchorDir)).rejects.toMatchObject({ code: 'ENOENT' });
});
