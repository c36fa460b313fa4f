/**
 * The `cachefs` command: one subcommand per file in this folder.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { fail } from './exit.js';
import { registerLoadCommand } from './load.js';
import { registerMasterCommand } from './master.js';
import { registerMountTableCommand } from './mount-table.js';
import { registerMountCommand } from './mount.js';
import { registerRefreshCommand } from './refresh.js';
import { registerReportCommand } from './report.js';
import { registerUmountCommand } from './umount.js';
import { registerWorkerCommand } from './worker.js';
import { optionsFromEnvironment } from './options.js';

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
registerMountCommand(program);
registerUmountCommand(program);
registerMasterCommand(program);
registerMountTableCommand(program);
registerWorkerCommand(program);
registerReportCommand(program);
registerLoadCommand(program);
registerRefreshCommand(program);
optionsFromEnvironment(program);

program.parseAsync(process.argv).catch(fail);
