/**
 * A real dockerd 20.10 (the engine balenaOS's balena-engine is forked from) on a data
 * root of the test's choosing, with everything else (exec-root, pidfile, socket, log,
 * scratch space) in a fresh temp dir under /tmp, so it never meets another engine on
 * the machine. Every engine started here is killed when the test process exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run, runOk, requireTools, tail, type RunOptions } from './exec.js';

export const DOCKERD = '/usr/sbin/dockerd';
/** The 20.10 client (never /usr/local/bin/docker, which is another version). */
export const DOCKER = '/usr/bin/docker';

export interface DockerdOptions {
  /** The engine data root (--data-root); created if missing. */
  dataRoot: string;
  /** Extra dockerd arguments. */
  extraArgs?: string[];
  /** How long to wait for the engine to answer (ms); default 90 s. */
  startTimeoutMs?: number;
}

const running = new Set<Dockerd>();
const runDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort: a test that throws or is cancelled must not leave an engine behind.
  // A test runner that times out sends SIGTERM; 'exit' does not fire for signals by default.
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const d of running) d.killNow();
      process.exit(128 + (sig === 'SIGTERM' ? 15 : sig === 'SIGINT' ? 2 : 1));
    });
  }
  process.on('exit', () => {
    for (const d of running) d.killNow();
    if (process.env.TRANSPLANT_KEEP_FIXTURES === '1') return;
    for (const dir of runDirs) {
      try {
        fs.rmSync(dir, { recursive: true, force: true });
      } catch {
        /* a leftover mount; leave it */
      }
    }
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class Dockerd {
  readonly dataRoot: string;
  /** Fresh temp dir holding exec-root, pidfile, socket, log, DOCKER_TMPDIR and client config. */
  readonly runDir: string;
  readonly execRoot: string;
  readonly pidFile: string;
  readonly socket: string;
  readonly logFile: string;
  readonly tmpDir: string;
  private readonly configDir: string;
  private child: ChildProcess | undefined;

  private constructor(dataRoot: string) {
    this.dataRoot = path.resolve(dataRoot);
    // Short path: the exec-root holds unix sockets (108-byte limit).
    this.runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpd-'));
    this.execRoot = path.join(this.runDir, 'x');
    this.pidFile = path.join(this.runDir, 'pid');
    this.socket = path.join(this.runDir, 'd.sock');
    this.logFile = path.join(this.runDir, 'dockerd.log');
    this.tmpDir = path.join(this.runDir, 'tmp');
    this.configDir = path.join(this.runDir, 'client');
    runDirs.add(this.runDir);
  }

  /** Starts an engine and waits until `docker info` answers. */
  static async start(opts: DockerdOptions): Promise<Dockerd> {
    requireTools(DOCKERD, DOCKER);
    installExitHook();
    const d = new Dockerd(opts.dataRoot);
    fs.mkdirSync(d.dataRoot, { recursive: true });
    fs.mkdirSync(d.tmpDir, { recursive: true });
    fs.mkdirSync(d.configDir, { recursive: true });
    const args = [
      '--data-root', d.dataRoot,
      '--exec-root', d.execRoot,
      '--pidfile', d.pidFile,
      '-H', `unix://${d.socket}`,
      '--bridge=none',
      '--iptables=false',
      '--ip-masq=false',
      '--storage-driver', 'overlay2',
      // Debug level: the engine reports layers and images it fails to restore only there.
      '--debug',
      ...(opts.extraArgs ?? []),
    ];
    const log = fs.openSync(d.logFile, 'a');
    try {
      d.child = spawn(DOCKERD, args, {
        stdio: ['ignore', log, log],
        detached: true,
        // DOCKER_TMPDIR: scratch space of `docker save`/`load`/`build`, kept out of the data root.
        env: { ...process.env, DOCKER_TMPDIR: d.tmpDir },
      });
    } finally {
      fs.closeSync(log);
    }
    d.child.on('error', () => undefined);
    running.add(d);
    const deadline = Date.now() + (opts.startTimeoutMs ?? 90_000);
    try {
      for (;;) {
        if (d.exited()) {
          throw new Error(`dockerd on ${d.dataRoot} exited during start-up: ${tail(d.log(), 3000)}`);
        }
        if (fs.existsSync(d.socket)) {
          const r = run(DOCKER, ['-H', `unix://${d.socket}`, 'info', '--format', '{{.Driver}}'], {
            env: d.clientEnv(),
            timeoutMs: 10_000,
          });
          if (r.code === 0) {
            if (r.stdout.trim() !== 'overlay2') {
              throw new Error(`dockerd on ${d.dataRoot} uses storage driver ${r.stdout.trim()}, not overlay2`);
            }
            break;
          }
        }
        if (Date.now() > deadline) {
          throw new Error(`dockerd on ${d.dataRoot} did not answer within ${opts.startTimeoutMs ?? 90_000} ms: ${tail(d.log(), 3000)}`);
        }
        await sleep(250);
      }
    } catch (err) {
      await d.stop().catch(() => undefined);
      throw err;
    }
    return d;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private exited(): boolean {
    const c = this.child;
    return !c || c.exitCode !== null || c.signalCode !== null;
  }

  private clientEnv(): Record<string, string> {
    return { DOCKER_CONFIG: this.configDir, DOCKER_BUILDKIT: '0', DOCKER_CLI_EXPERIMENTAL: 'disabled' };
  }

  /** Runs the docker client against this engine; returns stdout, throws with stderr on failure. */
  docker(args: readonly string[], opts: RunOptions = {}): string {
    return runOk(DOCKER, ['-H', `unix://${this.socket}`, ...args], {
      ...opts,
      env: { ...this.clientEnv(), ...(opts.env ?? {}) },
    }).stdout;
  }

  /** Like docker() but returns the exit code and both streams instead of throwing. */
  dockerRaw(args: readonly string[], opts: RunOptions = {}): { code: number; stdout: string; stderr: string } {
    return run(DOCKER, ['-H', `unix://${this.socket}`, ...args], {
      ...opts,
      env: { ...this.clientEnv(), ...(opts.env ?? {}) },
    });
  }

  /** Everything the engine logged so far. */
  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Stops the engine (SIGTERM, then SIGKILL after timeoutMs) and waits until it has exited. */
  async stop(timeoutMs = 45_000): Promise<void> {
    const c = this.child;
    if (c && !this.exited()) {
      try {
        c.kill('SIGTERM');
      } catch {
        /* already gone */
      }
      const deadline = Date.now() + timeoutMs;
      while (!this.exited() && Date.now() < deadline) await sleep(100);
      if (!this.exited()) {
        this.killNow();
        const hard = Date.now() + 10_000;
        while (!this.exited() && Date.now() < hard) await sleep(100);
      }
    }
    this.killContainerd();
    this.unmountLeftovers();
    running.delete(this);
    if (!this.exited()) throw new Error(`dockerd (pid ${c?.pid}) on ${this.dataRoot} did not exit`);
  }

  /** SIGKILL the engine and its containerd at once and undo their mounts (on failure and at process exit). */
  killNow(): void {
    const c = this.child;
    let killed = false;
    if (c && !this.exited() && c.pid) {
      try {
        process.kill(c.pid, 'SIGKILL');
        killed = true;
      } catch {
        /* gone */
      }
    }
    this.killContainerd();
    if (killed) this.unmountLeftovers();
  }

  /** The engine-managed containerd outlives a SIGKILLed dockerd; its pid is in the exec-root. */
  private killContainerd(): void {
    const pidPath = path.join(this.execRoot, 'containerd', 'containerd.pid');
    let pid: number;
    try {
      pid = Number(fs.readFileSync(pidPath, 'utf8').trim());
    } catch {
      return;
    }
    if (!Number.isInteger(pid) || pid <= 1) return;
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      // Only ours: its config lives in our exec-root.
      if (!cmdline.includes(this.execRoot)) return;
      process.kill(pid, 'SIGKILL');
    } catch {
      /* not running */
    }
  }

  /** Mounts left under our exec-root or data root by a killed engine (netns, overlay merged dirs). */
  private unmountLeftovers(): void {
    let mounts: string[];
    try {
      mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '');
    } catch {
      return;
    }
    const mine = mounts
      .map((m) => m.replace(/\\040/g, ' '))
      // The engine bind-mounts its data root onto itself (daemon/daemon_unix.go
      // setupDaemonRootPropagation) and undoes it only on a clean shutdown.
      .filter((m) => m === this.dataRoot || m.startsWith(this.execRoot + '/') || m.startsWith(this.dataRoot + '/'))
      .sort((a, b) => b.length - a.length);
    for (const m of mine) run('umount', ['-l', m], { timeoutMs: 10_000 });
  }

  /** Removes the temp dir (not the data root); otherwise it goes at process exit (unless TRANSPLANT_KEEP_FIXTURES=1). */
  cleanup(): void {
    fs.rmSync(this.runDir, { recursive: true, force: true });
    runDirs.delete(this.runDir);
  }
}

/** Starts an engine on dataRoot, runs fn, and always stops it. */
export async function withDockerd<T>(dataRoot: string, fn: (d: Dockerd) => Promise<T> | T): Promise<T> {
  const d = await Dockerd.start({ dataRoot });
  try {
    return await fn(d);
  } finally {
    await d.stop();
  }
}
