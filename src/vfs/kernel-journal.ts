/**
 * What the kernel holds of a mount — node ids with their paths, and open file and
 * directory handles — written to a file as it changes, so that a serving process
 * taking over the kernel connection of one that died (`fuse/session.ts`, resume)
 * knows the ids the kernel goes on using. Nothing else survives: a restored handle is
 * opened again at its first use, a restored node's lookup count is not known.
 *
 * The file is append-only, one line per change, each written before the kernel is
 * answered: copied into a shared mapping of the file (`sys/mapped-file.ts`; written
 * where koffi cannot load), so into the page cache: it outlives the process, which is
 * all that is asked of it. Unwritten zero bytes past and between lines are skipped.
 * `n ID "PATH"` a node made, `x ID` a node dropped, `f FH "PATH"` and `d FH "PATH"` a
 * file or directory opened, `r FH` a handle released, `b ID` a passthrough backing id
 * registered with the kernel and `c ID` one closed (a backing outlives the process that
 * registered it: the one taking over closes those left). A torn last
 * line (the process died writing it) is ignored. When dead lines outnumber live
 * ones, the file is written anew from the live state (a new file renamed over it).
 * The directory is the mount's private runtime dir; the file is 0600.
 */
import { closeSync, openSync, readFileSync, renameSync, statSync, writeSync } from 'node:fs';
import { CachefsError } from '../errors.js';
import { textOfAppended, type MappedFiles } from '../sys/mapped-file.js';

export type HandleKind = 'file' | 'dir';

/** The state a journal held: what a serving process taking over starts from. */
export interface HeldState {
  /** Node ids and their paths (the root is not in it). */
  nodes: Map<number, string>;
  handles: Map<number, { kind: HandleKind; path: string }>;
  /** Passthrough backing ids registered with the kernel and not closed. */
  backings: Set<number>;
  /** Past the highest node id and handle in it: new ones never take an id the kernel may hold. */
  nextNode: number;
  nextHandle: number;
}

/** The live state, for writing the journal anew. */
export interface LiveState {
  nodes(): Iterable<[number, string]>;
  handles(): Iterable<[number, HandleKind, string]>;
  backings(): Iterable<number>;
}

/** Dead lines (dropped nodes, released handles, and their records) allowed beyond the live ones before the file is written anew. */
const SLACK_LINES = 65_536;

/** Where lines go: the file's mapping, or write(2). */
interface Appender {
  append(text: string): void;
  close(): void;
}

export class KernelJournal {
  /** Set by `fresh`, and by `rewrite` (which `resume` starts with). */
  private out: Appender | undefined;
  /** Lines in the file, and records in it that are still live. */
  private lines = 0;
  private live = 0;

  private constructor(
    private readonly file: string,
    private readonly state: LiveState,
    private readonly mapped: MappedFiles | undefined,
  ) {}

  /** A new, empty journal at `file` (a journal left there by an earlier mount is dropped); appended to through `mapped` when given. */
  static fresh(file: string, state: LiveState, mapped?: MappedFiles): KernelJournal {
    closeSync(openSync(file, 'w', 0o600));
    const journal = new KernelJournal(file, state, mapped);
    journal.out = journal.appender();
    return journal;
  }

  /** Reads the journal at `file`; throws NOT_FOUND when there is none. */
  static read(file: string): HeldState {
    let text: string;
    try {
      text = textOfAppended(readFileSync(file));
    } catch (err) {
      throw new CachefsError('NOT_FOUND', `no journal of the kernel's nodes at ${file}: ${(err as Error).message}`, { cause: err });
    }
    const held: HeldState = { nodes: new Map(), handles: new Map(), backings: new Set(), nextNode: 2, nextHandle: 1 };
    const end = text.lastIndexOf('\n');
    for (const line of text.slice(0, end + 1).split('\n')) {
      if (line.length < 3) continue;
      const space = line.indexOf(' ', 2);
      const id = Number(space < 0 ? line.slice(2) : line.slice(2, space));
      const path = space < 0 ? '' : (JSON.parse(line.slice(space + 1)) as string);
      switch (line[0]) {
        case 'n':
          held.nodes.set(id, path);
          held.nextNode = Math.max(held.nextNode, id + 1);
          break;
        case 'x':
          held.nodes.delete(id);
          break;
        case 'f':
        case 'd':
          held.handles.set(id, { kind: line[0] === 'f' ? 'file' : 'dir', path });
          held.nextHandle = Math.max(held.nextHandle, id + 1);
          break;
        case 'r':
          held.handles.delete(id);
          break;
        case 'b':
          held.backings.add(id);
          break;
        case 'c':
          held.backings.delete(id);
          break;
        default:
          throw new CachefsError('IO', `the journal of the kernel's nodes at ${file} has a line '${line.slice(0, 40)}': expected n, x, f, d, r, b or c records`);
      }
    }
    return held;
  }

  /** Continues the journal at `file` (read with `read`), written anew from `state` first. */
  static resume(file: string, state: LiveState, mapped?: MappedFiles): KernelJournal {
    const journal = new KernelJournal(file, state, mapped);
    journal.rewrite();
    return journal;
  }

  nodeMade(id: number, path: string): void {
    this.live += 1;
    this.append(`n ${id} ${JSON.stringify(path)}\n`);
  }

  nodeDropped(id: number): void {
    this.live -= 1;
    this.append(`x ${id}\n`);
  }

  opened(fh: number, kind: HandleKind, path: string): void {
    this.live += 1;
    this.append(`${kind === 'file' ? 'f' : 'd'} ${fh} ${JSON.stringify(path)}\n`);
  }

  released(fh: number): void {
    this.live -= 1;
    this.append(`r ${fh}\n`);
  }

  backingOpened(id: number): void {
    this.live += 1;
    this.append(`b ${id}\n`);
  }

  backingClosed(id: number): void {
    this.live -= 1;
    this.append(`c ${id}\n`);
  }

  close(): void {
    this.out?.close();
    this.out = undefined;
  }

  private append(line: string): void {
    if (!this.out) throw new CachefsError('IO', "the journal of the kernel's nodes is closed");
    this.out.append(line);
    this.lines += 1;
    if (this.lines > 2 * this.live + SLACK_LINES) this.rewrite();
  }

  /** Writes the live state to a new file and renames it over the journal: a crash meanwhile leaves the old one whole. */
  private rewrite(): void {
    const tmp = `${this.file}.new`;
    const fd = openSync(tmp, 'w', 0o600);
    let lines = 0;
    try {
      const chunk: string[] = [];
      const flush = (): void => {
        writeSync(fd, chunk.join(''));
        chunk.length = 0;
      };
      for (const [id, path] of this.state.nodes()) {
        chunk.push(`n ${id} ${JSON.stringify(path)}\n`);
        if (chunk.length >= 4096) flush();
        lines += 1;
      }
      for (const [fh, kind, path] of this.state.handles()) {
        chunk.push(`${kind === 'file' ? 'f' : 'd'} ${fh} ${JSON.stringify(path)}\n`);
        lines += 1;
      }
      for (const id of this.state.backings()) {
        chunk.push(`b ${id}\n`);
        lines += 1;
      }
      flush();
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    this.out?.close();
    this.out = this.appender();
    this.lines = this.live = lines;
  }

  /** Appends to the journal's file after what is in it. */
  private appender(): Appender {
    if (this.mapped) return this.mapped.open(this.file, 0o600, statSync(this.file).size);
    const fd = openSync(this.file, 'a', 0o600);
    return { append: (text) => writeSync(fd, text), close: () => closeSync(fd) };
  }
}
