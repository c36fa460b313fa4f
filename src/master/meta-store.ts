/**
 * The `MetaStore` interface: where the master keeps its state (mount table,
 * worker registry, shared namespace cache) as JSON values under string keys. One interface, several
 * implementations chosen by configuration: `lmdb-store.ts` (the embedded,
 * crash-safe default in `--meta-dir`) and `memory-store.ts` (tests, throwaway
 * masters). A distributed store for HA would be a third. Knows nothing about
 * what the records mean; callers decode what they read.
 */

/** A write of a batch: a put of a JSON-serializable value, or a delete. */
export type MetaWrite = { key: string; value: unknown } | { key: string; delete: true };

export interface MetaEntry {
  key: string;
  value: unknown;
}

export interface MetaStore {
  /** The value under `key`, undefined when there is none. */
  get(key: string): Promise<unknown>;
  /** Every entry whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<MetaEntry[]>;
  /** The keys that start with `prefix`, in key order, without reading their values. */
  keys(prefix: string): Promise<string[]>;
  /** Stores a JSON-serializable value; durable once the promise resolves. */
  put(key: string, value: unknown): Promise<void>;
  /** Removes a key; true when it existed. Durable once the promise resolves. */
  delete(key: string): Promise<boolean>;
  /** Applies all writes atomically (all or none), durable once the promise resolves. */
  commit(writes: readonly MetaWrite[]): Promise<void>;
  /** Waits for pending writes and releases the store; any later call fails. */
  close(): Promise<void>;
}

export function isDelete(w: MetaWrite): w is { key: string; delete: true } {
  return 'delete' in w;
}
