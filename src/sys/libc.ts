/**
 * The C library, reached through the `koffi` FFI package: the one place that loads it.
 * Node lacks a few system calls cachefs needs (`flock`, `ioctl` on `/dev/fuse`, `sendmsg`
 * and `recvmsg` with descriptors); each module that needs one declares its function on the
 * handle this returns, once, and keeps it.
 *
 * koffi ships its native binary in the npm tarball (nothing is downloaded or built at
 * install), so it loads wherever the package installed. It is loaded on first use: a
 * process that never needs libc never pays for it, and a runtime where it cannot load gets
 * one clear error naming what needed it.
 */
import type * as KoffiModule from 'koffi';
import { CachefsError } from '../errors.js';

export type Koffi = typeof KoffiModule;

export interface Libc {
  /** The FFI itself, for structs, pointers and decoding. */
  koffi: Koffi;
  /** libc.so.6, for `lib.func('int flock(int fd, int operation)')`. */
  lib: ReturnType<Koffi['load']>;
  /** The errno the last call on this thread left. */
  errno(): number;
}

let loaded: Promise<Libc> | undefined;

/** Loads koffi and libc once; `purpose` names what needs them in the error when they cannot load. */
export function loadLibc(purpose: string): Promise<Libc> {
  loaded ??= (async () => {
    // A specifier in a variable: the package stays optional at build time.
    const name = 'koffi';
    const koffi = ((await import(name)) as { default: Koffi }).default;
    return { koffi, lib: koffi.load('libc.so.6'), errno: () => koffi.errno() };
  })();
  return loaded.catch((err: unknown) => {
    loaded = undefined;
    throw new CachefsError('IO', `${purpose} needs the 'koffi' package, which cannot load: ${(err as Error).message}`, { cause: err });
  });
}
