/**
 * One run at a time on a target: an exclusive flock(2) on the target itself (the engine
 * root or resin-data directory, the disk image file) for the whole run. Nothing is created
 * in the target for it, a bind mount or symlink of the same directory meets the same lock
 * (it is on the inode), and the kernel releases it when the process dies, even by SIGKILL.
 *
 * A second run waits (saying for whom) or, with `wait: false`, fails with "in use by pid N".
 * The holder's pid comes from /proc/locks (fs/locks.c lock_get_status: "FLOCK ADVISORY
 * WRITE <pid> <major>:<minor>:<inode>", device numbers in hex).
 */
import * as fs from 'node:fs';
import { tryLock } from '../fsx/index.js';

export interface LockOptions {
  /** Wait for the holder to finish (default), or fail at once. */
  wait: boolean;
  /** Told once when the run has to wait. */
  onWait?: (message: string) => void;
  /** Polling interval while waiting (ms). */
  pollMs?: number;
}

export class TargetLock {
  private fds: number[];

  constructor(fds: number[]) {
    this.fds = fds;
  }

  /** One lock holding the descriptors of several. */
  static join(locks: readonly TargetLock[]): TargetLock {
    const fds = locks.flatMap((l) => l.fds);
    for (const l of locks) l.fds = [];
    return new TargetLock(fds);
  }

  /** Releases every lock; safe to call twice. */
  release(): void {
    for (const fd of this.fds) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already closed */
      }
    }
    this.fds = [];
  }
}

function sameFile(a: fs.BigIntStats, b: fs.BigIntStats): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/** The pid holding a flock on this file, from /proc/locks (undefined when not found). */
export function lockHolder(st: fs.BigIntStats): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync('/proc/locks', 'utf8');
  } catch {
    return undefined;
  }
  // Linux dev_t: major = bits 8-19 and 32-43, minor = bits 0-7 and 12-31 (include/linux/kdev_t.h).
  const dev = st.dev;
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  let byInode: number | undefined;
  for (const line of text.split('\n')) {
    const m = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (!m || BigInt(m[4] as string) !== st.ino) continue;
    const pid = Number(m[1]);
    if (BigInt(`0x${m[2]}`) === major && BigInt(`0x${m[3]}`) === minor) return pid;
    byInode ??= pid; // some file systems report another device number there (btrfs subvolumes)
  }
  return byInode;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Locks `file` (a directory or a regular file) exclusively. `what` names it in messages.
 * A file replaced by rename while this run waited (an in-place disk run committing) is
 * locked again under its new inode, so the lock is always on what the path names now.
 */
export async function lockFile(file: string, what: string, options: LockOptions): Promise<TargetLock> {
  let told = false;
  for (;;) {
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (err) {
      throw new Error(`${what}: cannot open it to lock it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    let keep = false;
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      if (!st.isDirectory() && !st.isFile()) throw new Error(`${what} is neither a directory nor a regular file`);
      if (tryLock(fd)) {
        let now: fs.BigIntStats | undefined;
        try {
          now = fs.statSync(file, { bigint: true });
        } catch {
          now = undefined;
        }
        if (now && sameFile(now, st)) {
          keep = true;
          return new TargetLock([fd]);
        }
        continue; // replaced while we waited: lock what is there now
      }
      const pid = lockHolder(st);
      const who = pid !== undefined && pid > 0 ? `pid ${pid}` : 'another process';
      if (!options.wait) throw new Error(`${what} is in use by ${who} (another run writing into it); try again when it has finished, or leave out --no-wait to wait for it`);
      if (!told) {
        told = true;
        options.onWait?.(`${what} is in use by ${who}; waiting for it to finish (Ctrl-C to give up, --no-wait to fail instead)`);
      }
    } finally {
      if (!keep) fs.closeSync(fd);
    }
    await sleep(options.pollMs ?? 200);
  }
}

/** Locks several files in the order given (every run takes them in the same order); all or none. */
export async function lockFiles(files: readonly { file: string; what: string }[], options: LockOptions): Promise<TargetLock> {
  const held: TargetLock[] = [];
  try {
    for (const f of files) held.push(await lockFile(f.file, f.what, options));
  } catch (err) {
    for (const l of held) l.release();
    throw err;
  }
  return TargetLock.join(held);
}
