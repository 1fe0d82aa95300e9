/**
 * Running external programs from tests: synchronous, with a timeout, and errors that
 * say which command failed and what it printed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

// The CLI prints progress lines on stderr by default when stderr is not a terminal (plain, as
// buildx does). Tests read stderr for errors and warnings, so every CLI they start (directly,
// through a shell, through setpriv) inherits TRANSPLANT_PROGRESS=none; the tests of progress
// itself pass --progress or clear it (test/interface.test.ts).
process.env.TRANSPLANT_PROGRESS ??= 'none';

export interface RunOptions {
  /** Written to the child's stdin. */
  input?: string | Buffer;
  /** Extra environment variables (merged over process.env). */
  env?: Record<string, string>;
  cwd?: string;
  /** Milliseconds; default 120 s. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout as bytes (for NUL-separated output and non-UTF-8 names). */
  stdoutBytes: Buffer;
}

/** Runs a program and returns whatever happened (never throws for a non-zero exit). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const r = spawnSync(cmd, args as string[], {
    input: opts.input,
    env: opts.env ? { ...process.env, ...opts.env } : process.env,
    cwd: opts.cwd,
    timeout: opts.timeoutMs ?? 120_000,
    maxBuffer: 512 * 1024 * 1024,
    killSignal: 'SIGKILL',
  });
  if (r.error) {
    const e = r.error as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') {
      throw new Error(`${cmd} is not installed (needed by the tests): install it (see .ci/run)`);
    }
    if (e.code === 'ETIMEDOUT') {
      throw new Error(`timed out after ${opts.timeoutMs ?? 120_000} ms: ${describe(cmd, args)}`);
    }
    throw new Error(`cannot run ${describe(cmd, args)}: ${e.message}`);
  }
  const stdoutBytes = r.stdout ?? Buffer.alloc(0);
  return {
    code: r.status ?? (r.signal ? 128 : 1),
    stdout: stdoutBytes.toString('utf8'),
    stderr: (r.stderr ?? Buffer.alloc(0)).toString('utf8'),
    stdoutBytes,
  };
}

/** Runs a program; throws with its stderr unless it exits 0. */
export function runOk(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const r = run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `${describe(cmd, args)} exited ${r.code}: ${tail(r.stderr || r.stdout, 2000)}`,
    );
  }
  return r;
}

export function describe(cmd: string, args: readonly string[]): string {
  const shown = args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  return `${path.basename(cmd)} ${shown}`.slice(0, 400);
}

export function tail(text: string, max: number): string {
  const t = text.trim();
  return t.length > max ? '…' + t.slice(t.length - max) : t;
}

/** Fails with a clear message when a program the tests rely on is missing. */
export function requireTools(...tools: string[]): void {
  const dirs = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':');
  const missing = tools.filter((t) => {
    if (t.startsWith('/')) return !fs.existsSync(t);
    return !dirs.some((d) => d && fs.existsSync(path.join(d, t)));
  });
  if (missing.length > 0) {
    throw new Error(
      `missing tools needed by the tests: ${missing.join(', ')} (install the Debian packages listed in .ci/run)`,
    );
  }
}

/** The repository root (holds package.json), found from this file (src or dist). */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'tsconfig.json'))) {
      return dir;
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the repository root above ${__dirname}`);
    dir = up;
  }
}
