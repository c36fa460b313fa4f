/**
 * `cachefs refresh PATH`: makes the master's shared namespace cache forget a
 * namespace path — its listing and every listing below it, its attributes and
 * those below it, and its parent's listing — so that the next mount to look
 * there gets what the object store holds now rather than waiting for
 * `--namespace-ttl`. Mounts still keep their own `--meta-ttl`. Presents the
 * cluster secret like every admin command; wiring only.
 */
import { Command } from 'commander';
import { normalizeMountPath } from '../master/mount-path.js';
import { addClusterSecurityOptions } from './cluster-options.js';
import { runAction } from './exit.js';
import { adminClient, DEFAULT_MASTER, type MasterFlag } from './mount-table.js';

export function registerRefreshCommand(program: Command): void {
  const command = program
    .command('refresh')
    .description("drop the master's cached listings and attributes of a namespace path (and below it)")
    .argument('<path>', 'a path of the cluster namespace, e.g. /data/train')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER);
  addClusterSecurityOptions(command, 'admin').action(
    runAction(async (path: string, flags: MasterFlag) => {
      const normalized = normalizeMountPath(path);
      const client = adminClient(flags);
      try {
        const answer = await client.refreshNamespace(normalized);
        process.stdout.write(`refreshed ${answer.path}: ${answer.listings} listings and ${answer.stats} stats dropped\n`);
      } finally {
        await client.close();
      }
    }),
  );
}
