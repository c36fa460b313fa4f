/**
 * Narrowing of untrusted JSON (request bodies, master responses, records read
 * back from the meta store) into typed values. Every failure is an
 * INVALID_ARGUMENT CachefsError that names the field and what was expected.
 * Only shape checks live here; domain rules (paths, URIs, ids) are in `api.ts`.
 */
import { CachefsError } from '../errors.js';

function bad(what: string, expected: string): CachefsError {
  return new CachefsError('INVALID_ARGUMENT', `invalid ${what}: expected ${expected}`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The fields of one JSON object, read by name with the type each must have. */
export class Fields {
  private constructor(private readonly o: Record<string, unknown>, private readonly what: string) {}

  static of(value: unknown, what: string): Fields {
    if (!isPlainObject(value)) throw bad(what, 'a JSON object');
    return new Fields(value, what);
  }

  private name(key: string): string {
    return `${this.what}.${key}`;
  }

  has(key: string): boolean {
    return this.o[key] !== undefined && this.o[key] !== null;
  }

  string(key: string): string {
    const v = this.o[key];
    if (typeof v !== 'string') throw this.has(key) ? bad(this.name(key), 'a string') : this.missing(key);
    return v;
  }

  optionalString(key: string): string | undefined {
    return this.has(key) ? this.string(key) : undefined;
  }

  /** A non-negative integer (bytes, counts, epoch milliseconds). */
  count(key: string): number {
    const v = this.o[key];
    if (!this.has(key)) throw this.missing(key);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(this.name(key), 'a non-negative integer');
    return v;
  }

  optionalCount(key: string): number | undefined {
    return this.has(key) ? this.count(key) : undefined;
  }

  boolean(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.o[key];
    if (typeof v !== 'boolean') throw bad(this.name(key), 'true or false');
    return v;
  }

  /** An object of string values; absent means empty. */
  stringMap(key: string): Record<string, string> {
    if (!this.has(key)) return {};
    const v = this.o[key];
    if (!isPlainObject(v)) throw bad(this.name(key), 'an object of string values');
    const out: Record<string, string> = {};
    for (const [k, item] of Object.entries(v)) {
      if (typeof item !== 'string') throw bad(`${this.name(key)}.${k}`, 'a string');
      out[k] = item;
    }
    return out;
  }

  array(key: string): unknown[] {
    const v = this.o[key];
    if (!this.has(key)) throw this.missing(key);
    if (!Array.isArray(v)) throw bad(this.name(key), 'an array');
    return v;
  }

  optionalArray(key: string): unknown[] | undefined {
    return this.has(key) ? this.array(key) : undefined;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[]): T {
    const v = this.string(key);
    const found = allowed.find((a) => a === v);
    if (found === undefined) throw bad(this.name(key), `one of ${allowed.join(', ')} (got '${v}')`);
    return found;
  }

  raw(key: string): unknown {
    return this.o[key];
  }

  private missing(key: string): CachefsError {
    return new CachefsError('INVALID_ARGUMENT', `missing field '${key}' in ${this.what}`);
  }
}
