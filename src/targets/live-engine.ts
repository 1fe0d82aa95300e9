/**
 * Is an engine running on this data root right now? Writing under a live engine corrupts
 * its state, so inject refuses unless --force. Linux: look for dockerd / balena-engine
 * processes and at what they hold open or were told on their command line.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

const ENGINE_NAMES = /^(dockerd|balena-engine|balena-engine-daemon|balenad|balena)$/;

async function realpathOr(p: string): Promise<string> {
  try {
    return await fs.realpath(p);
  } catch {
    return path.resolve(p);
  }
}

function dataRootArg(argv: string[]): string {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    for (const flag of ['--data-root', '-g', '--graph']) {
      if (a === flag && i + 1 < argv.length) return argv[i + 1];
      if (a.startsWith(flag + '=')) return a.slice(flag.length + 1);
    }
  }
  return '/var/lib/docker';
}

/** The PID of an engine using `engineRoot`, or undefined. */
export async function findLiveEngine(engineRoot: string): Promise<number | undefined> {
  if (process.platform !== 'linux') return undefined;
  const root = await realpathOr(engineRoot);
  let pids: string[];
  try {
    pids = (await fs.readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let argv: string[];
    try {
      argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
    } catch {
      continue;
    }
    if (argv.length === 0 || !ENGINE_NAMES.test(path.basename(argv[0]))) continue;
    const configured = await realpathOr(dataRootArg(argv));
    if (configured === root) return Number(pid);
    // A root given through a config file: look at the files it holds open.
    try {
      for (const fd of await fs.readdir(`/proc/${pid}/fd`)) {
        const target = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
        if (target === root || target.startsWith(root + '/')) return Number(pid);
      }
    } catch {
      /* not ours to inspect */
    }
  }
  return undefined;
}
