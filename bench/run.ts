/**
 * npm run bench [-- case…] : transplant against the plain tools doing the same I/O.
 *
 * Cases (all by default): preload, bundle, disk, tarball, registry, registry-disk. Environment:
 *   BENCH_DIR          where the workload and scratch space live (default /var/tmp/transplant-bench)
 *   BENCH_RUNS         runs per side (default 3), interleaved A B A B …
 *   BENCH_DROP_CACHES  '0' keeps the page cache warm; otherwise `sync; echo 3 > drop_caches`
 *                      before every run of either side (so every run reads from the disk)
 *   BENCH_WRITE        '0' does not write docs/benchmarks.md (it is written when every case ran)
 *   BENCH_TRANSPLANT   bin/transplant to measure (default: this checkout's)
 *   BENCH_BASELINE     path of another build's bin/transplant: the reference side of every case
 *                      becomes that build running the same commands (to measure a change)
 *
 * Every side ends with its data on the disk: transplant syncs its target on close (syncfs),
 * so the tar sides run `sync -f <dest>` inside their timing; the disk case unmounts.
 * Peak memory of every transplant run is read from `/usr/bin/time -v`.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Dockerd, DOCKER } from '../test/harness/dockerd.js';
import { repoRoot, requireTools, runOk } from '../test/harness/exec.js';
import { buildBalenaImage } from '../test/harness/balena-image.js';
import { startRegistry, type Registry } from '../test/harness/registry.js';
import { getWorkload, type Workload } from './workload.js';

const BENCH_DIR = process.env.BENCH_DIR ?? '/var/tmp/transplant-bench';
const RUNS = Number(process.env.BENCH_RUNS ?? '3');
const DROP = process.env.BENCH_DROP_CACHES !== '0';
const TIME = '/usr/bin/time';
const REPO = repoRoot();
const TRANSPLANT = process.env.BENCH_TRANSPLANT ?? path.join(REPO, 'bin', 'transplant');
const BASELINE = process.env.BENCH_BASELINE;

interface Sample {
  seconds: number;
  /** Peak resident set size in MB (transplant runs only). */
  rssMB?: number;
}

interface Side {
  label: string;
  /** Transplant sides: the run with another build's bin/transplant (BENCH_BASELINE). */
  with?: (bin: string) => Sample;
  /** Untimed preparation before every run. */
  before?: () => void | Promise<void>;
  run: () => Sample | Promise<Sample>;
  /** Untimed cleanup after every run. */
  after?: () => void | Promise<void>;
}

interface Case {
  name: string;
  what: string;
  target: string;
  /** ratio = transplant / reference; ok when check(ratio). */
  check: (ratio: number) => boolean;
  /** Peak RSS above this is flagged (default 300 MB). */
  rssLimitMB?: number;
  setup?: () => Promise<void>;
  teardown?: () => Promise<void>;
  a: Side;
  b: Side;
}

interface Result {
  c: Case;
  a: Sample[];
  b: Sample[];
  /** Why the case stopped early (its setup failed), if it did. */
  failed?: string;
  /** Why a side stopped (its first failure), if it did. */
  aFailed?: string;
  bFailed?: string;
}

/** The last meaningful line of an error message (ext2fs prints "Aborted(OOM)" lines before the real one). */
function lastLine(message: string): string {
  return message.split('\n').filter((l) => l.trim() && !/^Aborted\(OOM\)$/.test(l.trim())).slice(-1)[0] ?? message;
}

function log(s: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
}

function dropCaches(): void {
  if (!DROP) return;
  runOk('/bin/sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
}

function sh(script: string): Sample {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/bin/bash', ['-euo', 'pipefail', '-c', script], { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`bench: ${script.slice(0, 300)} failed (${r.status ?? r.signal}): ${r.stderr.toString().slice(-2000)}`);
  return { seconds };
}

/** Runs transplant under /usr/bin/time -v: wall seconds and peak RSS. */
function transplant(args: string[], bin = TRANSPLANT): Sample {
  const timeFile = path.join(BENCH_DIR, 'time.txt');
  const t0 = process.hrtime.bigint();
  // Run as users run it (the executable itself, so its shebang's node options apply).
  const r = spawnSync(TIME, ['-v', '-o', timeFile, bin, ...args], { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`bench: transplant ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr.toString().slice(-2000)}`);
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(fs.readFileSync(timeFile, 'utf8'));
  if (!m) throw new Error(`bench: no "Maximum resident set size" in ${timeFile}`);
  return { seconds, rssMB: Number(m[1]) / 1024 };
}

function both(...samples: Sample[]): Sample {
  return {
    seconds: samples.reduce((s, x) => s + x.seconds, 0),
    rssMB: Math.max(...samples.map((x) => x.rssMB ?? 0)),
  };
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const TAR_X = "--xattrs --xattrs-include='*'";

function fresh(dir: string): string {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function cases(w: Workload): Case[] {
  const scratch = path.join(BENCH_DIR, 'scratch');
  const dest = path.join(scratch, 'dest');
  const imageArgs = w.images.flatMap((i) => ['--image', i]);
  const clean = (): void => fs.rmSync(scratch, { recursive: true, force: true });

  // Case 2: the engines, kept between runs (only the target one is fresh per run).
  let src: Dockerd | undefined;
  let dst: Dockerd | undefined;
  let registry: Registry | undefined;
  const clientConfig = path.join(BENCH_DIR, 'docker-client');
  const dockerEnv = `DOCKER_CONFIG=${q(clientConfig)} DOCKER_BUILDKIT=0`;

  // Case 3: a pristine balenaOS image with room for the workload.
  const diskDir = path.join(BENCH_DIR, `disk-${w.dir.split('/').pop()}`);
  const pristine = path.join(diskDir, 'pristine.img');
  const dataOffset = path.join(diskDir, 'data.json');
  const runImg = path.join(scratch, 'run.img');
  const mnt = path.join(BENCH_DIR, 'mnt');

  const pristineDisk = async (): Promise<void> => {
    if (fs.existsSync(dataOffset)) return;
    log('building the pristine balenaOS disk image');
    fresh(diskDir);
    const dataMiB = Math.ceil((w.bytes * 1.3) / 2 ** 20 + w.files * 8192 / 2 ** 20 / 4) + 256;
    const img = buildBalenaImage(diskDir, 'pristine.img', { dataMiB, deviceType: { slug: 'genericx86-64-ext', arch: process.arch === 'arm64' ? 'aarch64' : 'amd64' } });
    fs.writeFileSync(dataOffset, JSON.stringify(img.data));
  };
  const copyPristine = (): void => {
    fresh(scratch);
    runOk('cp', ['--sparse=always', pristine, runImg], { timeoutMs: 600_000 });
  };

  // Cases 5 and 6: the workload pushed once by a real dockerd to Debian's docker-registry on 127.0.0.1 (untimed).
  const startBenchRegistry = async (): Promise<void> => {
    requireTools('docker-registry');
    fs.mkdirSync(clientConfig, { recursive: true });
    registry = await startRegistry({ storage: path.join(BENCH_DIR, 'registry-storage'), dir: path.join(BENCH_DIR, 'registry') });
    const pusher = await Dockerd.start({ dataRoot: w.engineRoot });
    try {
      for (const img of w.images) {
        pusher.docker(['tag', img, `${registry.host}/${img}`]);
        pusher.docker(['push', `${registry.host}/${img}`], { timeoutMs: 1_800_000 });
        pusher.docker(['rmi', `${registry.host}/${img}`]);
      }
    } finally {
      await pusher.stop();
      pusher.cleanup();
    }
  };
  const archiveOf = (img: string): string => path.join(scratch, `${img.replace(/[^A-Za-z0-9.-]/g, '_')}.tar`);

  const extractInject = (bin: string): Sample => {
    const bundle = path.join(dest, 'images.bundle');
    return both(
      transplant(['extract', '--from', w.engineRoot, ...imageArgs, '-o', bundle], bin),
      transplant(['inject', bundle, '--engine-root', path.join(dest, 'engine')], bin),
    );
  };

  return [
    {
      name: 'preload',
      what: 'engine root → engine root',
      target: '≤ 1.3×',
      check: (r) => r <= 1.3,
      a: {
        label: 'transplant preload',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => transplant(['preload', '--from', w.engineRoot, ...imageArgs, '--engine-root', path.join(dest, 'engine')]),
        with: (bin) => transplant(['preload', '--from', w.engineRoot, ...imageArgs, '--engine-root', path.join(dest, 'engine')], bin),
        after: clean,
      },
      b: {
        label: 'GNU tar | tar',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => sh(`tar ${TAR_X} -C ${q(w.engineRoot)} -cf - overlay2 image | tar -xpf - ${TAR_X} -C ${q(path.join(dest, 'engine'))}; sync -f ${q(dest)}`),
        after: clean,
      },
    },
    {
      name: 'bundle',
      what: 'engine → bundle → engine',
      target: '≤ 0.33× (3× faster)',
      check: (r) => r <= 1 / 3,
      setup: async () => {
        fs.mkdirSync(clientConfig, { recursive: true });
        src = await Dockerd.start({ dataRoot: w.engineRoot });
      },
      teardown: async () => {
        await src?.stop();
        src?.cleanup();
      },
      a: {
        label: 'transplant extract + inject',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => extractInject(TRANSPLANT),
        with: (bin) => extractInject(bin),
        after: clean,
      },
      b: {
        label: 'docker save | docker load',
        before: async () => {
          fresh(dest);
          dst = await Dockerd.start({ dataRoot: path.join(dest, 'engine') });
        },
        run: () =>
          sh(
            `${dockerEnv} ${DOCKER} -H unix://${src!.socket} save ${w.images.join(' ')} | ${dockerEnv} ${DOCKER} -H unix://${dst!.socket} load -q; sync -f ${q(dest)}`,
          ),
        after: async () => {
          await dst?.stop();
          dst?.cleanup();
          clean();
        },
      },
    },
    {
      name: 'disk',
      what: 'engine root → balenaOS disk image',
      // issue 10: at most 1.5× loop mount + tar, peak RSS at most 200 MB.
      target: '≤ 1.5×',
      check: (r) => r <= 1.5,
      rssLimitMB: 200,
      setup: pristineDisk,
      a: {
        label: 'transplant inject --disk',
        before: () => {
          fresh(scratch);
          runOk('cp', ['--sparse=always', pristine, runImg], { timeoutMs: 600_000 });
        },
        run: () => transplant(['inject', w.engineRoot, ...imageArgs, '--disk', runImg]),
        with: (bin) => transplant(['inject', w.engineRoot, ...imageArgs, '--disk', runImg], bin),
        after: clean,
      },
      b: {
        label: 'loop mount + GNU tar | tar + umount',
        before: () => {
          fresh(scratch);
          fs.mkdirSync(mnt, { recursive: true });
          runOk('cp', ['--sparse=always', pristine, runImg], { timeoutMs: 600_000 });
        },
        run: () => {
          const d = JSON.parse(fs.readFileSync(dataOffset, 'utf8')) as { offset: number; size: number };
          return sh(
            [
              `mount -t ext4 -o loop,offset=${d.offset},sizelimit=${d.size} ${q(runImg)} ${q(mnt)}`,
              `trap 'umount ${q(mnt)} 2>/dev/null || true' EXIT`,
              `tar ${TAR_X} -C ${q(w.engineRoot)} -cf - overlay2 image | tar -xpf - ${TAR_X} -C ${q(path.join(mnt, 'docker'))}`,
              `umount ${q(mnt)}`,
            ].join('\n'),
          );
        },
        after: clean,
      },
    },
    {
      name: 'tarball',
      what: 'data-root .tar.gz → bundle vs → tree',
      target: '(reported)',
      check: () => true,
      a: {
        label: 'transplant extract --from docker.tar.gz',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => transplant(['extract', '--from', w.tarball, ...imageArgs, '-o', path.join(dest, 'images.bundle')]),
        with: (bin) => transplant(['extract', '--from', w.tarball, ...imageArgs, '-o', path.join(dest, 'images.bundle')], bin),
        after: clean,
      },
      b: {
        label: 'tar -xzf',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => sh(`tar -xzpf ${q(w.tarball)} ${TAR_X} -C ${q(dest)}; sync -f ${q(dest)}`),
        after: clean,
      },
    },
    {
      name: 'registry',
      what: 'loopback registry → engine root',
      target: '≤ 1.0×',
      check: (r) => r <= 1.0,
      setup: startBenchRegistry,
      teardown: async () => {
        await registry?.stop();
      },
      a: {
        label: 'transplant preload --from docker://',
        before: () => void fresh(path.join(dest, 'engine')),
        run: () => transplant(['preload', '--from', `docker://${registry!.host}`, ...imageArgs, '--engine-root', path.join(dest, 'engine')]),
        with: (bin) => transplant(['preload', '--from', `docker://${registry!.host}`, ...imageArgs, '--engine-root', path.join(dest, 'engine')], bin),
        after: clean,
      },
      b: {
        label: 'docker pull (fresh data root)',
        before: async () => {
          fresh(dest);
          dst = await Dockerd.start({ dataRoot: path.join(dest, 'engine') });
        },
        run: () => sh(`${w.images.map((i) => `${dockerEnv} ${DOCKER} -H unix://${dst!.socket} pull -q ${q(`${registry!.host}/${i}`)} >/dev/null`).join('\n')}\nsync -f ${q(dest)}`),
        after: async () => {
          await dst?.stop();
          dst?.cleanup();
          clean();
        },
      },
    },
    {
      name: 'registry-disk',
      what: 'loopback registry → balenaOS disk image',
      // issue 11: against skopeo copy to a docker-archive + transplant inject --disk (reported).
      target: '(reported)',
      check: () => true,
      setup: async () => {
        requireTools('skopeo');
        await pristineDisk();
        await startBenchRegistry();
      },
      teardown: async () => {
        await registry?.stop();
      },
      a: {
        label: 'transplant preload --from docker:// --disk',
        before: copyPristine,
        run: () => transplant(['preload', '--from', `docker://${registry!.host}`, ...imageArgs, '--disk', runImg]),
        with: (bin) => transplant(['preload', '--from', `docker://${registry!.host}`, ...imageArgs, '--disk', runImg], bin),
        after: clean,
      },
      b: {
        // skopeo writes one image per docker-archive: one copy and one inject per image.
        label: 'skopeo copy to docker-archive + transplant inject --disk',
        before: copyPristine,
        run: () =>
          both(
            sh(w.images.map((i) => `skopeo copy --quiet --src-tls-verify=false docker://${registry!.host}/${i} docker-archive:${q(archiveOf(i))}:${q(i)}`).join('\n')),
            ...w.images.map((i) => transplant(['inject', archiveOf(i), '--disk', runImg])),
          ),
        after: clean,
      },
    },
  ];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Spread of the runs around their median, in percent: (max - min) / median. */
function spread(xs: number[]): number {
  return ((Math.max(...xs) - Math.min(...xs)) / median(xs)) * 100;
}

async function measure(c: Case): Promise<Result> {
  const res: Result = { c, a: [], b: [] };
  try {
    await measureInto(c, res);
  } catch (err) {
    // One failing case must not cost the others: report it in the table.
    res.failed = lastLine((err as Error).message);
    log(`${c.name} FAILED: ${res.failed}`);
  }
  return res;
}

async function measureInto(c: Case, res: Result): Promise<void> {
  await c.setup?.();
  try {
    for (let i = 0; i < RUNS; i++) {
      for (const [side, out, key] of [[c.a, res.a, 'aFailed'], [c.b, res.b, 'bFailed']] as const) {
        if (res[key]) continue;
        await side.before?.();
        dropCaches();
        try {
          const s = await side.run();
          out.push(s);
          log(`${c.name} ${i + 1}/${RUNS} ${side.label}: ${s.seconds.toFixed(2)} s${s.rssMB !== undefined ? `, peak RSS ${s.rssMB.toFixed(0)} MB` : ''}`);
        } catch (err) {
          // A failing side is reported; the other side is still measured.
          res[key] = lastLine((err as Error).message);
          log(`${c.name} ${side.label} FAILED: ${res[key]}`);
        } finally {
          await side.after?.();
        }
      }
    }
  } finally {
    await c.teardown?.();
  }
}

function table(results: Result[]): string {
  const lines = [
    '| case | transplant | median s | reference | median s | ratio | target | peak RSS (max of runs) | spread A / B |',
    '|---|---|---:|---|---:|---:|---|---:|---|',
  ];
  const cell = (t: string): string => t.replace(/\|/g, '\\|');
  for (const { c, a, b, failed, aFailed, bFailed } of results) {
    if (failed || a.length === 0 || b.length === 0) {
      const mb = b.length > 0 ? median(b.map((s) => s.seconds)).toFixed(2) : '–';
      const why = failed ?? aFailed ?? bFailed ?? 'no runs';
      lines.push(`| ${cell(c.what)} | ${cell(c.a.label)} | ${a.length > 0 ? median(a.map((s) => s.seconds)).toFixed(2) : '**failed**'} | ${cell(c.b.label)} | ${mb} | – | ${cell(c.target)}: ${cell(why).slice(0, 300)} | – | – |`);
      continue;
    }
    const ma = median(a.map((s) => s.seconds));
    const mb = median(b.map((s) => s.seconds));
    const ratio = ma / mb;
    const rss = Math.max(...a.map((s) => s.rssMB ?? 0));
    lines.push(
      `| ${cell(c.what)} | ${cell(c.a.label)} | ${ma.toFixed(2)} | ${cell(c.b.label)} | ${mb.toFixed(2)} | ${ratio.toFixed(2)}× | ${c.target} ${c.check(ratio) ? 'met' : '**missed**'} | ${rss.toFixed(0)} MB ${rss <= (c.rssLimitMB ?? 300) ? '' : `(**> ${c.rssLimitMB ?? 300} MB**)`} | ±${(spread(a.map((s) => s.seconds)) / 2).toFixed(0)}% / ±${(spread(b.map((s) => s.seconds)) / 2).toFixed(0)}% |`,
    );
  }
  return lines.join('\n');
}

function gitHead(): string {
  const r = spawnSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD']);
  return r.status === 0 ? r.stdout.toString().trim() : '?';
}

function machine(): string {
  const cpus = os.cpus();
  const first = (cmd: string): string => {
    const r = spawnSync('/bin/sh', ['-c', cmd]);
    return r.status === 0 ? r.stdout.toString().trim() : '?';
  };
  const dev = first(`df --output=source ${q(BENCH_DIR)} | tail -1`);
  const fsType = first(`df --output=fstype ${q(BENCH_DIR)} | tail -1`);
  const blk = dev.replace(/^\/dev\//, '').replace(/p?\d+$/, '');
  const rotational = first(`cat /sys/block/${blk}/queue/rotational 2>/dev/null`);
  return [
    `- CPU: ${cpus.length} × ${cpus[0]?.model ?? '?'}`,
    `- memory: ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    `- disk: ${dev} (${fsType}${rotational === '0' ? ', non-rotational' : rotational === '1' ? ', reported rotational' : ''}${dev.startsWith('/dev/vd') ? ', a virtio disk of a VM' : ''}) holding ${BENCH_DIR}`,
    `- kernel: ${os.type()} ${os.release()}, node ${process.version}, ${first('tar --version | head -1')}, ${first(`${DOCKER} --version`)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  requireTools(TIME, 'tar', 'sync', 'mount', 'umount', '/usr/sbin/dockerd', DOCKER);
  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (engine roots, loop mounts, drop_caches): run it as root');
  const wanted = process.argv.slice(2);
  fs.mkdirSync(BENCH_DIR, { recursive: true });
  const w = await getWorkload(BENCH_DIR, log);
  log(`workload: ${w.files} inodes, ${(w.bytes / 2 ** 30).toFixed(2)} GiB in overlay2/ of ${w.engineRoot}; images ${w.images.join(', ')}`);
  const all = cases(w);
  const unknown = wanted.filter((n) => !all.some((c) => c.name === n));
  if (unknown.length > 0) throw new Error(`unknown case ${unknown.join(', ')}: choose from ${all.map((c) => c.name).join(', ')}`);
  let chosen = wanted.length > 0 ? all.filter((c) => wanted.includes(c.name)) : all;
  if (BASELINE) {
    // The same transplant commands from another build as the reference side.
    chosen = chosen.map((c) => {
      const withBin = c.a.with as (bin: string) => Sample;
      // The case's setup stays: the registry cases need their registry for both builds.
      return { ...c, target: '(change)', check: () => true, b: { ...c.a, label: `baseline ${c.a.label}`, run: () => withBin(BASELINE) } };
    });
  }
  const results: Result[] = [];
  for (const c of chosen) results.push(await measure(c));
  const t = table(results);
  process.stdout.write(`\n${t}\n`);
  const runs = results
    .map(({ c, a, b, failed, aFailed, bFailed }) => {
      const side = (label: string, xs: Sample[], why?: string): string =>
        `${label} ${xs.length > 0 ? `${xs.map((s) => s.seconds.toFixed(2)).join(', ')} s` : ''}${why ? ` (failed: ${why})` : ''}`;
      return `- ${c.name}: ${failed ? `failed: ${failed}` : `${side(c.a.label, a, aFailed)}; ${side(c.b.label, b, bFailed)}`}`;
    })
    .join('\n');
  if (process.env.BENCH_WRITE !== '0' && chosen.length === all.length && !BASELINE) {
    const doc = [
      '# Benchmarks',
      '',
      'Written by `npm run bench` (bench/run.ts); do not edit by hand.',
      '',
      `Date: ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC. Workload ${w.dir.split('/').pop()} (bench/workload.ts): three images`,
      `(${w.images.join(', ')}) sharing a base layer; ${w.files} inodes and ${(w.bytes / 2 ** 30).toFixed(2)} GiB in their overlay2`,
      'directories, among them a layer of ~40,000 small files (node_modules-like) and one of four 200 MiB files.',
      '',
      'Machine:',
      '',
      machine(),
      '',
      `Build measured: ${process.env.BENCH_TRANSPLANT ? `a copy of the checkout made at commit ${process.env.BENCH_COMMIT ?? '?'}` : `this checkout at commit ${gitHead()}`}.`,
      '',
      `Method: ${RUNS} runs per side, interleaved (transplant, reference, transplant, …), medians.`,
      DROP
        ? 'Before every run of either side: `sync; echo 3 > /proc/sys/vm/drop_caches` (cold page cache, so every run reads its source from the disk).'
        : 'Page cache left warm between runs (BENCH_DROP_CACHES=0).',
      'Every side ends with its data on the disk: transplant syncs its target (syncfs) before it exits, so the tar sides',
      'run `sync -f <dest>` inside their timing, the loop-mount side unmounts, `docker load` is followed by `sync -f`.',
      'Dockerd start-up is outside the timing. Peak RSS is "Maximum resident set size" of `/usr/bin/time -v`',
      '(for extract + inject, the larger of the two). Spread is ±half of (max − min) / median: the machine is shared,',
      'so this is how noisy the numbers are.',
      '',
      t,
      '',
      'Runs (seconds, in order):',
      '',
      runs,
      '',
      fs.readFileSync(path.join(REPO, 'bench', 'analysis.md'), 'utf8'),
    ].join('\n');
    fs.writeFileSync(path.join(REPO, 'docs', 'benchmarks.md'), doc);
    log('wrote docs/benchmarks.md');
  } else {
    process.stdout.write(`\n${runs}\n`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    process.exit(1);
  },
);
