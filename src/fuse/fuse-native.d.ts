/** The part of fuse-native 2.2.6's API that cachefs uses (the package ships no types). */
declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (errno: number, ...result: T) => void;

  export interface FuseStat {
    mode: number;
    uid: number;
    gid: number;
    size: number;
    nlink: number;
    blksize: number;
    blocks: number;
    atime: Date;
    mtime: Date;
    ctime: Date;
  }

  export interface FuseOps {
    init?(cb: Cb): void;
    statfs?(path: string, cb: Cb<[object?]>): void;
    getattr?(path: string, cb: Cb<[FuseStat?]>): void;
    fgetattr?(path: string, fd: number, cb: Cb<[FuseStat?]>): void;
    access?(path: string, mode: number, cb: Cb): void;
    readdir?(path: string, cb: Cb<[string[]?, FuseStat[]?]>): void;
    open?(path: string, flags: number, cb: Cb<[number?]>): void;
    opendir?(path: string, flags: number, cb: Cb<[number?]>): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void;
    release?(path: string, fd: number, cb: Cb): void;
    releasedir?(path: string, fd: number, cb: Cb): void;
    [op: string]: ((...args: never[]) => void) | undefined;
  }

  export interface FuseOptions {
    force?: boolean;
    mkdir?: boolean;
    timeout?: number | false;
    allowOther?: boolean;
    autoCache?: boolean;
    kernelCache?: boolean;
    attrTimeout?: number;
    entryTimeout?: number;
    fsname?: string;
    subtype?: string;
    maxRead?: number;
    fd?: number;
    debug?: boolean;
  }

  export default class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOptions);
    mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
  }
}
