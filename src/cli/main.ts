/**
 * The `cachefs` command: one subcommand per file in this folder. Only the subcommand
 * asked for is loaded (all of them for help or an unknown one): loading every one took
 * a command such as `cachefs load` ~0.7 s of CPU before its first request.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { fail } from './exit.js';
import { optionsFromEnvironment } from './options.js';

type Register = (program: Command) => void;

/** Each subcommand's name and its module's register function, in the order help lists them. */
const SUBCOMMANDS: [string, () => Promise<Register>][] = [
  ['mount', async () => (await import('./mount.js')).registerMountCommand],
  ['umount', async () => (await import('./umount.js')).registerUmountCommand],
  ['master', async () => (await import('./master.js')).registerMasterCommand],
  ['mount-table', async () => (await import('./mount-table.js')).registerMountTableCommand],
  ['worker', async () => (await import('./worker.js')).registerWorkerCommand],
  ['report', async () => (await import('./report.js')).registerReportCommand],
  ['load', async () => (await import('./load.js')).registerLoadCommand],
  ['refresh', async () => (await import('./refresh.js')).registerRefreshCommand],
];

// The pinned AWS SDK supports Node 20; its multi-line notice about future releases would break
// the one-line error contract of every command that loads it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('cachefs')
  .description('mount object storage as a POSIX tree, backed by a cluster of block-cache workers')
  .version(pkg.version)
  .showHelpAfterError()
  .exitOverride((err) => {
    // commander already printed its message; keep its exit code (0 for --help/--version).
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

async function main(): Promise<void> {
  const asked = SUBCOMMANDS.find(([name]) => name === process.argv[2]);
  for (const [, load] of asked ? [asked] : SUBCOMMANDS) (await load())(program);
  optionsFromEnvironment(program);
  await program.parseAsync(process.argv);
}

main().catch(fail);
