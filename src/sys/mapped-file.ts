/**
 * Appending to a file through a shared memory mapping of it (mmap(2) MAP_SHARED, through
 * libc): a line appended is a copy into memory that is the file's page cache, so it
 * outlives the process as a write(2) would, without a system call per line. For logs
 * appended to on the hot path (the journal of the kernel's nodes: a line per LOOKUP that
 * makes a node; write(2) to it was a tenth of a LOOKUP's time in a cold `find`).
 *
 * The file grows by CHUNK bytes at a time, each chunk mapped while it is written to. A
 * chunk's blocks are allocated before it is mapped (posix_fallocate): a store to a mapped
 * page the file system has no room for kills the process with SIGBUS, where an allocation
 * that fails is an error to report (ENOSPC, like the write(2) it replaces). A line that
 * does not fit the rest of a chunk goes to the next one: the rest stays zero bytes, which
 * readers skip (`textOfAppended`), as they skip the zeros after the last line. Undefined (`loadMappedFiles`) where koffi cannot load: callers write
 * instead.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { constants as os } from 'node:os';
import { CachefsError } from '../errors.js';
import { loadLibc } from './libc.js';

/** Bytes mapped at a time, and by which the file grows. */
const CHUNK = 1024 * 1024;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
/** mmap's MAP_FAILED: (void *) -1. */
const MAP_FAILED = 0xffffffffffffffffn;

interface Calls {
  fallocate(fd: number, offset: number, length: number): number;
  mmap(addr: null, length: number, prot: number, flags: number, fd: number, offset: number): unknown;
  munmap(addr: unknown, length: number): number;
  address(pointer: unknown): bigint;
  view(pointer: unknown, length: number): ArrayBuffer;
  errno(): number;
}

/** Opens files to append to through mappings. */
export interface MappedFiles {
  /** Opens `file` (made with `mode` if missing) to append to after its first `used` bytes. */
  open(file: string, mode: number, used: number): MappedAppend;
}

/** Loads what mapping needs; undefined where koffi cannot load. */
export async function loadMappedFiles(): Promise<MappedFiles | undefined> {
  let calls: Calls;
  try {
    const { koffi, lib, errno } = await loadLibc('mapping a file');
    calls = {
      fallocate: lib.func('int posix_fallocate(int fd, int64_t offset, int64_t len)') as Calls['fallocate'],
      mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as Calls['mmap'],
      munmap: lib.func('int munmap(void *addr, size_t length)') as Calls['munmap'],
      address: (p) => koffi.address(p) as bigint,
      view: (p, length) => koffi.view(p, length),
      errno,
    };
  } catch {
    return undefined;
  }
  return { open: (file, mode, used) => new MappedAppend(calls, file, mode, used) };
}

/** A file appended to in its mapping. */
export class MappedAppend {
  private readonly fd: number;
  /** The chunk mapped now: its pointer, its bytes, and where in the file it starts. */
  private pointer: unknown;
  private bytes: Buffer | undefined;
  private base = 0;
  /** Where the next byte goes, in the chunk. */
  private at = 0;

  constructor(
    private readonly calls: Calls,
    file: string,
    mode: number,
    /** Bytes of the file in use already (the next line goes after them). */
    used: number,
  ) {
    this.fd = openSync(file, constants.O_RDWR | constants.O_CREAT, mode);
    try {
      this.mapChunk(Math.floor(used / CHUNK) * CHUNK);
      this.at = used - this.base;
    } catch (err) {
      closeSync(this.fd);
      throw err;
    }
  }

  /** Appends `text` (one or more whole lines). */
  append(text: string): void {
    const length = Buffer.byteLength(text);
    if (length > CHUNK) throw new CachefsError('INVALID_ARGUMENT', `a line of ${length} bytes is longer than a mapped file's chunk (${CHUNK})`);
    // (No chunk mapped: growing the file failed before; it is tried again.)
    if (this.bytes === undefined || this.at + length > CHUNK) this.mapChunk(this.base + CHUNK);
    this.bytes!.write(text, this.at, 'utf8');
    this.at += length;
  }

  close(): void {
    this.unmap();
    closeSync(this.fd);
  }

  /** Maps the chunk at `base` (growing the file to hold it, its blocks allocated), unmapping the one before. */
  private mapChunk(base: number): void {
    this.unmap();
    const failed = this.calls.fallocate(this.fd, base, CHUNK); // an errno, not -1
    if (failed !== 0) throw new CachefsError('IO', `cannot grow a mapped file by ${CHUNK} bytes: ${failed === os.errno.ENOSPC ? 'no space left on its file system (ENOSPC)' : `errno ${failed}`}`);
    const pointer = this.calls.mmap(null, CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, base);
    if (this.calls.address(pointer) === MAP_FAILED) throw new CachefsError('IO', `cannot map a file: errno ${this.calls.errno()}`);
    this.pointer = pointer;
    this.bytes = Buffer.from(this.calls.view(pointer, CHUNK));
    this.base = base;
    this.at = 0;
  }

  private unmap(): void {
    if (this.pointer === undefined) return;
    // No view of the chunk outlives it: `bytes` is this object's alone.
    this.bytes = undefined;
    this.calls.munmap(this.pointer, CHUNK);
    this.pointer = undefined;
  }
}

/** The text of a file appended to by lines, mapped or written: the zero bytes of unwritten chunk ends left out. */
export function textOfAppended(bytes: Buffer): string {
  return bytes.toString('utf8').replaceAll('\0', '');
}
