/**
 * A `MetaStore` held in memory: for tests and for masters whose state may be
 * lost. Values are copied through JSON on the way in and out, so callers see
 * the same (de)serialization as with a persistent store.
 */
import { CachefsError } from '../errors.js';
import { isDelete, type MetaEntry, type MetaStore, type MetaWrite } from './meta-store.js';

export class MemoryMetaStore implements MetaStore {
  private readonly data = new Map<string, string>();
  private closed = false;

  async get(key: string): Promise<unknown> {
    this.check();
    const text = this.data.get(key);
    return text === undefined ? undefined : JSON.parse(text);
  }

  async list(prefix: string): Promise<MetaEntry[]> {
    this.check();
    return [...this.data.entries()]
      .filter(([key]) => key.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, text]) => ({ key, value: JSON.parse(text) }));
  }

  async keys(prefix: string): Promise<string[]> {
    return (await this.list(prefix)).map((e) => e.key);
  }

  async put(key: string, value: unknown): Promise<void> {
    await this.commit([{ key, value }]);
  }

  async delete(key: string): Promise<boolean> {
    this.check();
    return this.data.delete(key);
  }

  async commit(writes: readonly MetaWrite[]): Promise<void> {
    this.check();
    // Serialize everything first so that a value that cannot be stored leaves nothing half-written.
    const prepared = writes.map((w) => (isDelete(w) ? { key: w.key } : { key: w.key, text: JSON.stringify(w.value) }));
    for (const p of prepared) {
      if (p.text === undefined) this.data.delete(p.key);
      else this.data.set(p.key, p.text);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private check(): void {
    if (this.closed) throw new CachefsError('IO', 'meta store is closed');
  }
}
