/**
 * The `mount.cachefs` (and `mount.fuse.cachefs`) process that mount(8) runs for
 * `mount -t cachefs` and fstab entries: translates its arguments (`mount-helper.ts`)
 * and runs `cachefs mount` with them, which detaches once the mount answers. Its exit
 * code and one-line error are the command's.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { fail } from './exit.js';
import { mountCommandArgs, parseHelperArgs } from './mount-helper.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const NAME = 'mount.cachefs';
const CACHEFS = fileURLToPath(new URL('../../bin/cachefs', import.meta.url));

async function main(): Promise<number> {
  const invocation = parseHelperArgs(process.argv.slice(2));
  const args = ['mount', ...mountCommandArgs(invocation)];
  // Nothing secret can be in `args`: mountCommandArgs refuses secret values given inline.
  if (invocation.verbose) process.stderr.write(`${NAME}: cachefs ${args.join(' ')}\n`);
  if (invocation.fake) return 0;
  const child = spawn(process.execPath, [CACHEFS, ...args], { stdio: 'inherit' });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => fail(err, NAME),
);
