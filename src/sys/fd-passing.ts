/**
 * Open file descriptors passed between processes over a Unix stream socket (`SCM_RIGHTS`),
 * which Node has no call for: `sendmsg` and `recvmsg` of libc (`libc.ts`), and the receiving
 * end's connection made with libc's `socket` and `connect`, so that libuv never reads it (a
 * plain `read` of bytes that carry descriptors closes them unseen).
 *
 * Every call here is non-blocking (`MSG_DONTWAIT`) and returns at once, so it is made on the
 * event loop and holds no thread of libuv's pool waiting on a socket: a sender sends only
 * small records into a socket whose reader keeps up, and a receiver reads only when it knows
 * its record is there (the worker's answer on another connection says so,
 * net/socket-protocol.ts). `EAGAIN` comes back as an errno for the caller to decide on.
 *
 * The message structs are laid out by koffi in memory of its own, one area per process:
 * calls are synchronous on one thread, so one area serves them all.
 */
import { CachefsError } from '../errors.js';
import { loadLibc } from './libc.js';

export const EAGAIN = 11;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
/** Bytes of one message's data at most. */
export const MAX_MESSAGE = 1024;

/** What one `receive` got. */
export type Received = { data: Buffer; fd?: number; truncated: boolean } | { errno: number };

export interface FdPassing {
  /** A connected, non-blocking, close-on-exec Unix stream socket to `path`, made without libuv (so libuv never reads it). */
  connect(path: string): number;
  /** Sends `data` (at most MAX_MESSAGE bytes) and, with `fd`, a duplicate of that descriptor; bytes sent, or -errno. */
  send(socket: number, data: Buffer, fd?: number): number;
  /**
   * Receives up to `max` bytes (at most MAX_MESSAGE) and the descriptor sent with them, if any
   * (close-on-exec); `truncated` when the kernel dropped a descriptor (this process was out of them).
   */
  receive(socket: number, max: number): Received;
  /** Closes a descriptor this module made (Node's own close does the same for any other). */
  close(fd: number): void;
}

let loaded: Promise<FdPassing> | undefined;

/** koffi and libc's socket calls, once per process; fails (IO) where they cannot load. */
export function loadFdPassing(): Promise<FdPassing> {
  loaded ??= build().catch((err: unknown) => {
    loaded = undefined;
    throw err;
  });
  return loaded;
}

async function build(): Promise<FdPassing> {
  const { koffi, lib, errno } = await loadLibc('passing block file descriptors');
  const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
  const msghdr = koffi.struct({ msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: 'void *', msg_iovlen: 'size_t', msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int' });
  const cmsghdr = koffi.struct({ cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });
  const sockaddrUn = koffi.struct({ sun_family: 'uint16_t', sun_path: koffi.array('char', 108, 'Array') });
  const socket = lib.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
  const connect = lib.func('int connect(int fd, void *addr, uint32_t len)') as (fd: number, addr: unknown, len: number) => number;
  const sendmsg = lib.func('intptr_t sendmsg(int fd, void *msg, int flags)') as (fd: number, msg: unknown, flags: number) => number;
  const recvmsg = lib.func('intptr_t recvmsg(int fd, void *msg, int flags)') as (fd: number, msg: unknown, flags: number) => number;
  const close = lib.func('int close(int fd)') as (fd: number) => number;

  const align = (n: number): number => Math.ceil(n / 8) * 8;
  const MSG = 0;
  const IOV = align(koffi.sizeof(msghdr));
  const CTL = IOV + align(koffi.sizeof(iovec));
  // One descriptor: CMSG_SPACE(sizeof(int)).
  const fdOffset = align(koffi.sizeof(cmsghdr));
  const controlSpace = fdOffset + align(4);
  const DATA = CTL + controlSpace;
  const size = DATA + MAX_MESSAGE;
  const area: unknown = koffi.alloc('uint8_t', size);
  const base = koffi.address(area);
  const bytes = Buffer.from(koffi.view(area, size));
  const at = (offset: number): bigint => base + BigInt(offset);

  const header = (length: number, control: number): void => {
    koffi.encode(area, IOV, iovec, { iov_base: at(DATA), iov_len: length });
    koffi.encode(area, MSG, msghdr, { msg_name: null, msg_namelen: 0, msg_iov: at(IOV), msg_iovlen: 1, msg_control: control ? at(CTL) : null, msg_controllen: control, msg_flags: 0 });
  };
  const checkLength = (n: number): void => {
    if (n > MAX_MESSAGE) throw new CachefsError('INVALID_ARGUMENT', `a descriptor message of ${n} bytes, expected at most ${MAX_MESSAGE}`);
  };

  return {
    connect(path) {
      const name = Buffer.from(path);
      if (name.length >= 108) throw new CachefsError('INVALID_ARGUMENT', `socket path '${path}' is ${name.length} bytes, expected fewer than 108`);
      const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new CachefsError('IO', `socket() failed with errno ${errno()}`);
      bytes.fill(0, DATA, DATA + koffi.sizeof(sockaddrUn));
      bytes.writeUInt16LE(AF_UNIX, DATA);
      name.copy(bytes, DATA + 2);
      if (connect(fd, at(DATA), 2 + name.length + 1) !== 0) {
        const code = errno();
        close(fd);
        throw new CachefsError('UNREACHABLE', `cannot connect a descriptor channel to ${path}: errno ${code}`);
      }
      return fd;
    },
    send(fd, data, passed) {
      checkLength(data.length);
      data.copy(bytes, DATA);
      if (passed === undefined) header(data.length, 0);
      else {
        bytes.fill(0, CTL, CTL + controlSpace);
        koffi.encode(area, CTL, cmsghdr, { cmsg_len: fdOffset + 4, cmsg_level: SOL_SOCKET, cmsg_type: SCM_RIGHTS });
        bytes.writeInt32LE(passed, CTL + fdOffset);
        header(data.length, controlSpace);
      }
      const n = Number(sendmsg(fd, area, MSG_DONTWAIT | MSG_NOSIGNAL));
      return n < 0 ? -errno() : n;
    },
    receive(fd, max) {
      checkLength(max);
      bytes.fill(0, CTL, CTL + controlSpace);
      header(max, controlSpace);
      const n = Number(recvmsg(fd, area, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      if (n < 0) return { errno: errno() };
      const msg = koffi.decode(area, MSG, msghdr) as { msg_controllen: number | bigint; msg_flags: number };
      const cmsg = koffi.decode(area, CTL, cmsghdr) as { cmsg_len: number | bigint; cmsg_level: number; cmsg_type: number };
      const passed = Number(msg.msg_controllen) >= fdOffset + 4 && cmsg.cmsg_level === SOL_SOCKET && cmsg.cmsg_type === SCM_RIGHTS && Number(cmsg.cmsg_len) >= fdOffset + 4 ? bytes.readInt32LE(CTL + fdOffset) : undefined;
      return { data: Buffer.from(bytes.subarray(DATA, DATA + n)), fd: passed, truncated: (msg.msg_flags & MSG_CTRUNC) !== 0 };
    },
    close(fd) {
      close(fd);
    },
  };
}
