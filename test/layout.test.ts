/**
 * The layout is the architecture (docs/design.md): rooms in layers, imports only going
 * down. This reads every import of src/ and fails on one that goes up a layer or across
 * to a room of the same layer (client/ and worker/ never import each other).
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');

/** Each room's layer, bottom first. Files at the top of src/ (errors.ts, log.ts) are below everything. */
const LAYER: Record<string, number> = {
  '.': -1,
  config: 0,
  metrics: 0,
  lib: 1,
  sys: 1,
  block: 2,
  net: 3,
  ufs: 4,
  cache: 5,
  master: 5,
  worker: 6,
  client: 6,
  vfs: 7,
  fuse: 8,
  heal: 8,
  cli: 9,
};

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

function roomOf(file: string): string {
  const rel = path.relative(SRC, file);
  return rel.includes(path.sep) ? rel.split(path.sep)[0]! : '.';
}

describe('the layout of src/', () => {
  it('puts every room in a layer', async () => {
    const rooms = new Set((await sources(SRC)).map(roomOf));
    expect([...rooms].filter((r) => LAYER[r] === undefined)).toEqual([]);
  });

  it('has no import that goes up a layer or across to another room of the same layer', async () => {
    const wrong: string[] = [];
    for (const file of await sources(SRC)) {
      const from = roomOf(file);
      const text = await readFile(file, 'utf8');
      for (const m of text.matchAll(/(?:from\s+|import\(\s*)'(\.{1,2}\/[^']+)'/g)) {
        const to = roomOf(path.resolve(path.dirname(file), m[1]!));
        if (to === from) continue;
        if (!(LAYER[to]! < LAYER[from]!)) wrong.push(`${path.relative(SRC, file)} imports ${m[1]} (${from} -> ${to})`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
