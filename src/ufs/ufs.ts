/**
 * The under file system (UFS) interface: the object store or folder a mount reads
 * from. One implementation per backend (`s3.ts`, `local.ts`, `oss.ts`, `cos.ts`),
 * chosen from the URI by `open-ufs.ts`. A Ufs instance is bound to one root
 * (bucket + prefix, or folder): every key it takes and returns is relative to that
 * root and uses '/' as separator, never starting with '/'.
 *
 * It owns no caching and no retry policy beyond the SDK's. Failures are
 * CachefsErrors with the codes NOT_FOUND, ACCESS_DENIED, BUCKET_NOT_FOUND,
 * THROTTLED, UNREACHABLE, STALE or IO.
 */

export interface UfsObject {
  /** Key relative to the root, e.g. `train/part-0.tar`; a key ending in '/' is a directory marker. */
  key: string;
  size: number;
  mtimeMs: number;
  /** ETag or version id: changes whenever the object's bytes change. */
  etag: string;
}

export interface UfsListPage {
  /** Objects directly under the prefix (including a `prefix` marker itself if present). */
  objects: UfsObject[];
  /** Common prefixes directly under the prefix, each ending in '/'. */
  prefixes: string[];
  /**
   * Keys of objects listed by name alone: given only when asked (`UfsListOptions.names`)
   * by a backend whose objects' attributes cost a request each (a folder: a stat), in its
   * own order (a folder's directory stream's), not necessarily key order; a folder has no
   * object and directory of one name. `stat` gives an object's attributes.
   */
  names?: string[];
  /** Pass back to get the next page; absent on the last page. */
  nextToken?: string;
}

export interface UfsListOptions {
  token?: string;
  maxKeys?: number;
  signal?: AbortSignal;
  /** The caller takes objects by name alone (`UfsListPage.names`) where attributes would cost a request each. */
  names?: boolean;
}

export interface UfsReadOptions {
  /** Fail with STALE instead of returning bytes of another version. */
  etag?: string;
  signal?: AbortSignal;
  /**
   * Told, as the body arrives, how many leading bytes of the destination are in place
   * (rising), so that a caller can use the front of a long read before its end. A
   * backend that receives a body whole may not call it: the count returned is final.
   */
  onProgress?: (filled: number) => void;
}

export interface Ufs {
  /** The URI as given, without credentials: safe for logs and messages. */
  readonly displayUri: string;
  /** Lists objects by name alone when asked (`UfsListOptions.names`): their attributes cost a request each. */
  readonly listsByName?: boolean;
  /** Proves the root exists and the credentials work; fails with a clear CachefsError otherwise. */
  check(signal?: AbortSignal): Promise<void>;
  /** The object stored exactly at `key`, or null. */
  stat(key: string, signal?: AbortSignal): Promise<UfsObject | null>;
  /**
   * The objects at `keys` (files a listing gave by name alone), null where there is none:
   * a backend that can stat many together cheaper than one `stat` each says so by having it.
   */
  statFiles?(keys: readonly string[]): Promise<(UfsObject | null)[]>;
  /** One page of a delimiter ('/') listing of `prefix` ('' for the root, otherwise ending in '/'). */
  list(prefix: string, options?: UfsListOptions): Promise<UfsListPage>;
  /**
   * Reads the object's bytes from `offset` into all of `dest` (fewer only at the end of
   * the object); resolves with the count. Into the caller's buffers, so that block reads
   * can reuse them; several buffers are filled in order (one request for a run of blocks).
   */
  readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options?: UfsReadOptions): Promise<number>;
  close(): Promise<void>;
}

/** Options for a backend, as `backend.name=value` pairs (e.g. `s3.endpoint`). */
export type UfsOptions = Readonly<Record<string, string>>;

/** Finds the UFS that backs a mount id (the embedded mount has exactly one). */
export type UfsResolver = (mount: string) => Promise<Ufs>;
