/**
 * The channel between the mount supervisor and its serving process: Node's IPC
 * channel (fd 3 of the child). The serving process says once whether it mounted
 * (`ready`, with the port of its own metrics endpoint) or why it could not
 * (`failed`, with the exit code and the one-line message it also prints); a standby
 * says `standing-by` once it has loaded what it needs. Stopping goes the other way as a plain SIGTERM, so an operator
 * can stop a serving process the same way.
 *
 * The supervisor's open /dev/fuse is the serving process's descriptor `DEVICE_FD`
 * (`--device-fd`); `--resume` tells it that the connection on it is mounted and
 * negotiated already, by a serving process that died. A **standby** (`--standby`) is a
 * serving process started ahead of need: it loads its code and waits; the one message
 * the supervisor sends, `take-over`, makes it take the connection over as `--resume`
 * would. Until then it holds nothing, and SIGTERM ends it.
 */

/** Where a serving process finds the supervisor's /dev/fuse: after stdio (0-2) and the IPC channel (3). */
export const DEVICE_FD = 4;

/** The arguments that tell a serving process of the supervisor's descriptor, and whether to take its connection over. */
export function deviceArgs(mode: 'mount' | 'resume' | 'standby'): string[] {
  return ['--device-fd', String(DEVICE_FD), ...(mode === 'mount' ? [] : [`--${mode}`])];
}

/** What the supervisor sends: only `take-over`, to a standby. */
export const TAKE_OVER = { kind: 'take-over' } as const;

/** Resolves when the supervisor tells this standby to take the connection over. */
export function toldToTakeOver(): Promise<void> {
  return new Promise((resolve) => {
    const onMessage = (message: unknown): void => {
      if (typeof message !== 'object' || message === null || (message as { kind?: unknown }).kind !== TAKE_OVER.kind) return;
      process.off('message', onMessage);
      resolve();
    };
    process.on('message', onMessage);
  });
}

export type ServingMessage = { kind: 'ready'; metricsPort?: number } | { kind: 'failed'; exitCode: number; message: string } | { kind: 'standing-by' };

/** Narrows what arrived on the IPC channel; anything else is ignored. */
export function asServingMessage(value: unknown): ServingMessage | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (v.kind === 'ready') return { kind: 'ready', metricsPort: typeof v.metricsPort === 'number' ? v.metricsPort : undefined };
  if (v.kind === 'failed' && typeof v.exitCode === 'number' && typeof v.message === 'string') return { kind: 'failed', exitCode: v.exitCode, message: v.message };
  if (v.kind === 'standing-by') return { kind: 'standing-by' };
  return undefined;
}

/** Whether this process was started by a supervisor (it has the IPC channel). */
export function hasSupervisor(): boolean {
  return typeof process.send === 'function' && process.connected;
}

/** Sends one message to the supervisor; resolves once it is written (so exiting right after loses nothing). */
export function tellSupervisor(message: ServingMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!hasSupervisor()) return resolve();
    process.send!(message, undefined, {}, () => resolve());
  });
}

/** Calls `onGone` once if the supervisor's end of the channel closes (the supervisor died). */
export function whenSupervisorGone(onGone: () => void): void {
  process.once('disconnect', onGone);
}
