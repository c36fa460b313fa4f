/**
 * The backing files of FUSE passthrough, registered on the connection with ioctls on
 * /dev/fuse (Node has no ioctl: libc's, through `sys/libc.ts`). `FUSE_DEV_IOC_BACKING_OPEN`
 * takes an open descriptor and answers a backing id, which an open reply then names;
 * the kernel keeps its own reference to the file, so the descriptor may be closed at once.
 * `FUSE_DEV_IOC_BACKING_CLOSE` gives the id back. Which opens pass through is decided in
 * `vfs/passthrough.ts`, not here.
 *
 * The kernel refuses the registration without CAP_SYS_ADMIN (EPERM), without
 * CONFIG_FUSE_PASSTHROUGH (EOPNOTSUPP), and for a file on a stacked file system deeper than
 * the depth agreed at INIT (ELOOP): each is said once, and the mount reads the ordinary way
 * from then on.
 */
import { constants } from 'node:os';
import type { Logger } from '../log.js';
import { loadLibc } from '../sys/libc.js';
import type { BackingFiles } from '../vfs/passthrough.js';

/** _IOW(229, 1, struct fuse_backing_map): { int32 fd; uint32 flags; uint64 padding }. */
const FUSE_DEV_IOC_BACKING_OPEN = 0x4010e501;
/** _IOW(229, 2, uint32_t): the backing id. */
const FUSE_DEV_IOC_BACKING_CLOSE = 0x4004e502;
/**
 * The max_stack_depth answered at INIT: backing files on a file system that is not itself
 * stacked (ext4, xfs, tmpfs). One, not the kernel's most (2): the mount's own stacking
 * depth becomes this, and at 1 an overlayfs may still be built on top of the mount.
 */
export const PASSTHROUGH_STACK_DEPTH = 1;
const E = constants.errno;
/** What an errno of BACKING_OPEN means for the connection: it will refuse every file alike. */
const REFUSALS: ReadonlyMap<number, string> = new Map([
  [E.EPERM, 'the kernel refuses backing files to this process (it needs CAP_SYS_ADMIN)'],
  [E.EOPNOTSUPP, 'the kernel is built without CONFIG_FUSE_PASSTHROUGH'],
  [E.ENOTTY, 'the kernel does not know the backing-file ioctls'],
  [E.ELOOP, `the cache's files are on a stacked file system (overlayfs?), deeper than ${PASSTHROUGH_STACK_DEPTH}`],
]);

type Ioctl = (fd: number, request: number, arg: Buffer) => number;

export class DeviceBackingFiles implements BackingFiles {
  private refused = false;
  private readonly map = Buffer.alloc(16);
  private readonly id = Buffer.alloc(4);

  private constructor(
    private readonly device: number,
    private readonly ioctl: Ioctl,
    private readonly errno: () => number,
    private readonly log: Logger,
  ) {}

  /** Loads libc's ioctl for the connection open on `device` (/dev/fuse). */
  static async load(device: number, log: Logger): Promise<DeviceBackingFiles> {
    const libc = await loadLibc('FUSE passthrough');
    const ioctl = libc.lib.func('int ioctl(int fd, unsigned long request, void *arg)') as Ioctl;
    return new DeviceBackingFiles(device, ioctl, libc.errno, log);
  }

  open(fd: number): number | undefined {
    if (this.refused) return undefined;
    this.map.fill(0);
    this.map.writeInt32LE(fd, 0);
    const id = this.ioctl(this.device, FUSE_DEV_IOC_BACKING_OPEN, this.map);
    if (id >= 0) return id;
    const errno = this.errno();
    const refusal = REFUSALS.get(errno);
    if (refusal) {
      this.refused = true;
      this.log.warn({ errno }, `FUSE passthrough is off for this mount: ${refusal}; files are read through cachefs`);
    } else {
      this.log.warn({ errno }, 'the kernel refused a backing file for passthrough: this open is read through cachefs');
    }
    return undefined;
  }

  close(id: number): boolean {
    this.id.writeUInt32LE(id, 0);
    if (this.ioctl(this.device, FUSE_DEV_IOC_BACKING_CLOSE, this.id) >= 0) return true;
    this.log.warn({ id, errno: this.errno() }, 'the kernel refused to close a passthrough backing id');
    return false;
  }
}
