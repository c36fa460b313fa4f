/**
 * Pure parsing the master and its clients share: mount paths (normalization,
 * validation, resolution to the covering entry) and `host:port` addresses.
 */
import { describe, expect, it } from 'vitest';
import { parseHostPort } from '../src/net/host-port.js';
import { normalizeMountPath, resolveMountPath } from '../src/master/mount-path.js';

describe('mount paths', () => {
  it.each([
    ['/data', '/data'],
    ['/data/', '/data'],
    ['//data//train/', '/data/train'],
    ['/', '/'],
    ['///', '/'],
  ])('normalizes %j to %j', (input, expected) => {
    expect(normalizeMountPath(input)).toBe(expected);
  });

  it.each([
    ['data', /must be absolute/],
    ['', /must be absolute/],
    ['/data/../etc', /'\.\.'/],
    ['/./data', /'\.'/],
    ['/da\nta', /control characters/],
    [`/${'x'.repeat(256)}`, /longer than 255/],
  ])('rejects %j', (input, message) => {
    expect(() => normalizeMountPath(input)).toThrow(message);
  });

  it('resolves a path to the longest covering mount and the rest below it', () => {
    const entries = [{ path: '/data' }, { path: '/data2' }, { path: '/models/llm' }];
    expect(resolveMountPath(entries, '/data')).toEqual({ entry: { path: '/data' }, subPath: '' });
    expect(resolveMountPath(entries, '/data/a/b')).toEqual({ entry: { path: '/data' }, subPath: 'a/b' });
    expect(resolveMountPath(entries, '/data2/x')).toEqual({ entry: { path: '/data2' }, subPath: 'x' });
    expect(resolveMountPath(entries, '/models')).toBeUndefined();
    expect(resolveMountPath([{ path: '/' }], '/a/b')).toEqual({ entry: { path: '/' }, subPath: 'a/b' });
    expect(resolveMountPath([{ path: '/' }], '/')).toEqual({ entry: { path: '/' }, subPath: '' });
  });
});

describe('host:port addresses', () => {
  it.each([
    ['master-0:19998', 'master-0:19998', 'http://master-0:19998'],
    ['10.0.0.5:19998', '10.0.0.5:19998', 'http://10.0.0.5:19998'],
    ['http://m.cachefs.svc.cluster.local:1/', 'm.cachefs.svc.cluster.local:1', 'http://m.cachefs.svc.cluster.local:1'],
    ['[::1]:19998', '[::1]:19998', 'http://[::1]:19998'],
  ])('parses %j', (input, text, origin) => {
    expect(parseHostPort(input, '--master')).toMatchObject({ text, origin });
  });

  it.each(['master', ':19998', 'master:0', 'master:70000', 'user@master:1', 'master:1/path', 'ma ster:1'])('rejects %j', (input) => {
    expect(() => parseHostPort(input, '--master')).toThrow(/invalid --master/);
  });
});
