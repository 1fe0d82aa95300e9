/**
 * Running the built CLI (`node bin/transplant …`) from end-to-end tests, as root or as an
 * unprivileged user (setpriv to nobody:nogroup), and the assertions every such test makes
 * on what it printed.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, requireTools, run, type RunResult } from './exec.js';

/** nobody:nogroup on Debian. */
export const USER_UID = 65534;
export const USER_GID = 65534;

export interface CliOptions {
  /** Run as the unprivileged user USER_UID:USER_GID (no supplementary groups). */
  asUser?: boolean;
  timeoutMs?: number;
  /** Added to the environment ('' clears a variable for the CLI). */
  env?: Record<string, string>;
}

function command(args: readonly string[], opts: CliOptions): [string, string[]] {
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: the CLI is not there yet`);
  if (!opts.asUser) return [process.execPath, [cli, ...args]];
  requireTools('setpriv');
  return ['setpriv', [`--reuid=${USER_UID}`, `--regid=${USER_GID}`, '--clear-groups', process.execPath, cli, ...args]];
}

export function transplant(args: readonly string[], opts: CliOptions = {}): RunResult {
  const [cmd, argv] = command(args, opts);
  return run(cmd, argv, { timeoutMs: opts.timeoutMs ?? 300_000, env: opts.env });
}

/** Starts the CLI without waiting (setpriv execs node: the child's pid is the CLI's). */
export function spawnTransplant(args: readonly string[], opts: CliOptions = {}): ChildProcess {
  const [cmd, argv] = command(args, opts);
  return spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
}

export function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(0, 3000)}`;
}

/** Exit 1 with exactly one line `error: …` on stderr. */
export function assertOneLineError(r: RunResult, what: string): void {
  assert.equal(r.code, 1, `${what}: exit code 1 expected\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr expected\n${show(r)}`);
  assert.match(lines[0] as string, /^error: \S/, `${what}: the line starts with "error: "\n${show(r)}`);
}

/** Exit 1, the first line on stderr is `error: …` (further lines may list details). */
export function assertErrorFirstLine(r: RunResult, what: string): string {
  assert.equal(r.code, 1, `${what}: exit code 1 expected\n${show(r)}`);
  const first = r.stderr.split('\n')[0] ?? '';
  assert.match(first, /^error: \S/, `${what}: the first line starts with "error: "\n${show(r)}`);
  return first;
}

export interface ListedImage {
  id: string;
  references: string[];
}

/** `transplant ls <target> --json`. */
export function lsJson(target: string, opts: CliOptions = {}): ListedImage[] {
  const r = transplant(['ls', target, '--json'], opts);
  assert.equal(r.code, 0, `ls --json ${target}\n${show(r)}`);
  const images = (JSON.parse(r.stdout) as { images?: unknown } | null)?.images;
  assert.ok(Array.isArray(images), `ls --json prints the images\n${r.stdout.slice(0, 2000)}`);
  return images as ListedImage[];
}

/** A directory (and the path to it) the unprivileged user can enter; the directory itself is given to that user. */
export function userDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  for (let d = path.resolve(dir); d !== '/'; d = path.dirname(d)) {
    const st = fs.statSync(d);
    if ((st.mode & 0o001) === 0) fs.chmodSync(d, (st.mode & 0o7777) | 0o011);
  }
  fs.chownSync(dir, USER_UID, USER_GID);
  return dir;
}

/** Gives a file to the unprivileged user. */
export function giveToUser(file: string): string {
  fs.chownSync(file, USER_UID, USER_GID);
  return file;
}
