/**
 * Option parsing shared by subcommands: `KEY=VALUE` lists, `KEY=PATH` secret files,
 * default directories, and options from `CACHEFS_*` environment variables. Every error names the
 * bad value and what was expected.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command, Option } from 'commander';
import { CachefsError } from '../errors.js';

/** Commander collector for repeatable options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function parsePairs(pairs: string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${pair}': expected KEY=VALUE`);
    out[pair.slice(0, eq).trim()] = pair.slice(eq + 1);
  }
  return out;
}

/** `KEY=PATH` pairs whose values are read from files (Kubernetes secret mounts); the values are secrets. */
export function readSecretFiles(pairs: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, file] of Object.entries(parsePairs(pairs, '--option-from-file'))) {
    try {
      out[key] = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid --option-from-file '${key}=${file}': ${(err as { code?: string }).code ?? 'unreadable'}`);
    }
  }
  return out;
}

export function defaultCacheDir(): string {
  return process.getuid?.() === 0 ? '/var/cache/cachefs' : path.join(os.homedir(), '.cache', 'cachefs');
}

/** The rule every command's --help ends with, and README states once. */
export const ENV_RULE =
  'Every option can also be set by an environment variable: CACHEFS_ and the long option name in upper snake case ' +
  '(--cache-dir DIR: CACHEFS_CACHE_DIR=DIR; a switch such as --foreground or --no-sharing: CACHEFS_FOREGROUND=true, ' +
  'CACHEFS_NO_SHARING=true). An option given on the command line wins over its variable. ' +
  '--option is not read from the environment (it can carry secrets): use --option-from-file.';

/**
 * Options never read from the environment: `--option` may carry a secret in its value;
 * `--auth-token-file` has read CACHEFS_AUTH_TOKEN_FILE itself, as its default, since before
 * this rule, and a default is not a flag given (a --ufs mount refuses cluster flags).
 */
const NOT_FROM_ENV = new Set(['--option', '--auth-token-file', '--help', '--version', '--supervised']);

/** `--cache-dir` → `CACHEFS_CACHE_DIR`. */
export function envNameOf(longFlag: string): string {
  return `CACHEFS_${longFlag.replace(/^--/, '').replace(/-/g, '_').toUpperCase()}`;
}

const TRUE_WORDS = new Set(['1', 'true', 'yes', 'on']);
const FALSE_WORDS = new Set(['0', 'false', 'no', 'off', '']);

/**
 * Makes every option of `program`'s commands settable from `CACHEFS_<LONG_FLAG>`: before an
 * action runs, each option its command line left unset takes its variable's value through the
 * option's own parser (so choices and collectors apply), and each command's --help states the rule.
 * One mechanism for all commands, so a new flag has its variable without code of its own.
 */
export function optionsFromEnvironment(program: Command, env: NodeJS.ProcessEnv = process.env): void {
  const document = (command: Command): void => {
    if (command !== program) command.addHelpText('after', `\n${ENV_RULE}`);
    for (const sub of command.commands) document(sub);
  };
  document(program);
  program.hook('preAction', (_program, action) => applyEnvironment(action, env));
}

function applyEnvironment(command: Command, env: NodeJS.ProcessEnv): void {
  for (const option of command.options) {
    if (!option.long || NOT_FROM_ENV.has(option.long)) continue;
    const name = envNameOf(option.long);
    const text = env[name];
    if (text === undefined) continue;
    const key = option.attributeName();
    const source = command.getOptionValueSource(key);
    if (source === 'cli') continue;
    command.setOptionValueWithSource(key, envValue(option, name, text, command.getOptionValue(key)), 'env');
  }
}

function envValue(option: Option, name: string, text: string, current: unknown): unknown {
  if (option.required || option.optional) {
    if (!option.parseArg) return text;
    try {
      return option.parseArg(text, current);
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid ${name} '${text}' (for ${option.long}): ${(err as Error).message}`);
    }
  }
  const word = text.trim().toLowerCase();
  const on = TRUE_WORDS.has(word) ? true : FALSE_WORDS.has(word) ? false : undefined;
  if (on === undefined) throw new CachefsError('INVALID_ARGUMENT', `invalid ${name} '${text}' (for ${option.long}): expected true or false`);
  // A set `--no-x` switch turns x off; an unset one leaves x at its default.
  if (option.negate) return on ? false : current;
  return on ? true : current;
}
