/**
 * Is an engine running on this data root right now? Writing under a live engine corrupts
 * its state (it rewrites repositories.json from memory), so inject refuses unless --force.
 *
 * Compared by device and inode, never by path: the same directory has many names (on
 * balenaOS /var/lib/docker is a bind mount of /mnt/data/docker; a symlink; another mount
 * namespace). For every dockerd / balena-engine process (Linux, /proc): its data root
 * (--data-root/-g/--graph, else "data-root" in its daemon.json, else the default) is
 * looked up through /proc/<pid>/root — the engine's own view of the file system — and its
 * device and inode compared with the target's. As a fallback for a root configured some
 * other way, every file it holds open (/proc/<pid>/fd) is checked: one inside the target
 * (an ancestor with the target's device and inode) means the engine uses it.
 */
import { promises as fs } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import * as path from 'node:path';

const ENGINE_NAMES = /^(dockerd|balena-engine|balena-engine-daemon|balenad|balena)$/;
/** Default data roots: moby's (daemon/config_unix.go), and balena-engine's own name for it. */
const DEFAULT_ROOTS = ['/var/lib/docker', '/var/lib/balena-engine'];
const DEFAULT_CONFIGS = ['/etc/docker/daemon.json', '/etc/balena-engine/daemon.json'];

async function statOr(p: string): Promise<BigIntStats | undefined> {
  try {
    return await fs.stat(p, { bigint: true });
  } catch {
    return undefined;
  }
}

const same = (a: BigIntStats | undefined, b: BigIntStats): boolean => a !== undefined && a.dev === b.dev && a.ino === b.ino;

function flagValue(argv: readonly string[], flags: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    for (const flag of flags) {
      if (a === flag && i + 1 < argv.length) return argv[i + 1];
      if (a.startsWith(flag + '=')) return a.slice(flag.length + 1);
    }
  }
  return undefined;
}

/** A path as the process sees it, reached from here through its root directory. */
function inRootOf(pid: string, p: string): string {
  return path.join(`/proc/${pid}/root`, path.resolve('/', p));
}

/** The data roots the engine process may use, as paths in its own view. */
async function dataRootsOf(pid: string, argv: readonly string[]): Promise<string[]> {
  const given = flagValue(argv, ['--data-root', '-g', '--graph']);
  if (given !== undefined) return [given];
  const configFile = flagValue(argv, ['--config-file']);
  for (const file of configFile !== undefined ? [configFile] : DEFAULT_CONFIGS) {
    try {
      const parsed = JSON.parse(await fs.readFile(inRootOf(pid, file), 'utf8')) as { 'data-root'?: unknown; graph?: unknown };
      const root = parsed['data-root'] ?? parsed.graph;
      if (typeof root === 'string' && root !== '') return [root];
    } catch {
      /* no such config, or not JSON: the engine would refuse to start with a broken one */
    }
  }
  return DEFAULT_ROOTS;
}

/** True when the open file `p` (in the process's view) is the target or below it. */
async function isInside(pid: string, p: string, target: BigIntStats): Promise<boolean> {
  if (!p.startsWith('/')) return false; // socket:[…], pipe:[…], anon_inode:…
  for (let dir = p.replace(/ \(deleted\)$/, ''); ; dir = path.dirname(dir)) {
    if (same(await statOr(inRootOf(pid, dir)), target)) return true;
    if (dir === '/') return false;
  }
}

/** The PID of an engine using `engineRoot`, or undefined (also when the root does not exist yet). */
export async function findLiveEngine(engineRoot: string): Promise<number | undefined> {
  if (process.platform !== 'linux') return undefined;
  const target = await statOr(engineRoot);
  if (!target || !target.isDirectory()) return undefined;
  let pids: string[];
  try {
    pids = (await fs.readdir('/proc')).filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let argv: string[];
    let comm = '';
    try {
      argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
      comm = (await fs.readFile(`/proc/${pid}/comm`, 'utf8')).trim();
    } catch {
      continue;
    }
    if (argv.length === 0 || !(ENGINE_NAMES.test(path.basename(argv[0] as string)) || ENGINE_NAMES.test(comm))) continue;
    for (const root of await dataRootsOf(pid, argv)) {
      // Its own view first; the host's view of the same path when its root cannot be entered.
      if (same((await statOr(inRootOf(pid, root))) ?? (await statOr(root)), target)) return Number(pid);
    }
    let fds: string[] = [];
    try {
      fds = await fs.readdir(`/proc/${pid}/fd`);
    } catch {
      /* not ours to inspect */
    }
    for (const fd of fds) {
      const open = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (await isInside(pid, open, target)) return Number(pid);
    }
  }
  return undefined;
}
