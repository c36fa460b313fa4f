/**
 * Detaching a command into the background: the parent re-runs the same command
 * with `--foreground` in a new session and waits until the child reports on a
 * pipe (fd 3) that it is ready, or why it failed. The parent's exit code and
 * message are therefore the child's: `cachefs mount` returns 0 only once the
 * mount answers.
 */
import { spawn } from 'node:child_process';
import { openSync, writeSync, closeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { CachefsError } from '../errors.js';

/** The environment variable naming the pipe a detached child reports readiness on. */
export const READY_ENV = 'CACHEFS_READY_FD';
const READY_TIMEOUT_MS = 120_000;

/** Runs this process's command again in the background; resolves once it is ready, throws its error otherwise. */
export async function detach(logFile: string, what = 'log file'): Promise<number> {
  let log: number;
  try {
    mkdirSync(path.dirname(logFile), { recursive: true });
    log = openSync(logFile, 'a');
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `cannot write the ${what} '${logFile}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const args = [...process.execArgv, process.argv[1]!, ...process.argv.slice(2), '--foreground'];
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', log, log, 'pipe'],
    env: { ...process.env, [READY_ENV]: '3' },
  });
  closeSync(log);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let report = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (chunk: string) => (report += chunk));
  const outcome = await new Promise<{ ok: boolean; message: string; code: number }>((resolve) => {
    const timer = setTimeout(() => resolve({ ok: false, message: `not ready after ${READY_TIMEOUT_MS / 1000} s (see ${logFile})`, code: 1 }), READY_TIMEOUT_MS);
    const settle = (exitCode: number | null): void => {
      clearTimeout(timer);
      const line = report.split('\n')[0] ?? '';
      if (line.startsWith('ready')) resolve({ ok: true, message: '', code: 0 });
      else if (line.startsWith('error ')) {
        const [, code, ...rest] = line.split(' ');
        resolve({ ok: false, message: rest.join(' '), code: Number(code) || 1 });
      } else resolve({ ok: false, message: `exited with code ${exitCode ?? 'signal'} before it was ready (see ${logFile})`, code: 1 });
    };
    pipe.on('end', () => settle(child.exitCode));
    child.on('exit', (code) => setTimeout(() => settle(code), 50));
  });
  if (!outcome.ok) {
    if (child.exitCode === null) child.kill('SIGTERM');
    throw new DetachError(outcome.message, outcome.code);
  }
  child.unref();
  (pipe as unknown as { destroy(): void }).destroy();
  return child.pid!;
}

/** The background child's failure, carried to the parent with its exit code. */
export class DetachError extends CachefsError {
  constructor(message: string, readonly exitCode: number) {
    super('IO', message);
  }
}

/** In a detached child: tells the waiting parent that the service is ready. */
export function reportReady(): void {
  report('ready\n');
}

/** In a detached child: tells the waiting parent why it failed. */
export function reportFailure(exitCode: number, message: string): void {
  report(`error ${exitCode} ${message.split('\n')[0]}\n`);
}

function report(line: string): void {
  const fd = Number(process.env[READY_ENV]);
  if (!fd) return;
  try {
    writeSync(fd, line);
    closeSync(fd);
  } catch {
    // the parent is gone; nothing to tell
  }
  delete process.env[READY_ENV];
}
