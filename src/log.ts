/**
 * The process logger (pino). Structured JSON lines to stderr or a file; the
 * redaction list keeps credentials out of logs even when a caller logs an
 * options object by mistake.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

const REDACT = ['*.secretAccessKey', '*.accessKeySecret', '*.secretKey', '*.securityToken', '*.sessionToken', '*.password', 'options.*'];

export function createLogger(level: string, file?: string): Logger {
  const destination = file ? pino.destination({ dest: file, mkdir: true, sync: false }) : pino.destination(2);
  return pino({ level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } }, destination);
}

/** A logger that drops everything: for library use and tests that do not look at logs. */
export const silentLogger: Logger = pino({ level: 'silent' });
