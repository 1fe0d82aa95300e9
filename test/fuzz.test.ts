/**
 * A bounded fuzz run (issue "Hostile and broken input, interrupted runs"): a few hundred
 * mutated bundles, data-root tarballs and docker save archives (byte flips, truncations,
 * inserted blocks, tar header fields changed with the checksum fixed so the parser goes on)
 * injected into scratch engine roots. Every run ends in exit 0, or exit 1 with exactly one
 * `error: …` line and the target back as it was; never a crash, a stack trace, another exit
 * code, a hang (per-run timeout) or a file outside the target. The seed is fixed
 * (FUZZ_SEED overrides it) and printed with every failure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { runOk, requireTools } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { buildBalenaImage } from './harness/balena-image.js';
import { dataPartition, e2fsckProblems, sha256File } from './harness/disk-judge.js';
import { CliWorker, bundleBytes, dockerArchiveBytes, rootfsTarballBytes, type HostileLayer } from './harness/hostile.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20260526);
const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
/** Runs through a real `node bin/transplant` process (the rest go through main() in a worker). */
const PROCESS_RUNS = 6;
const RUN_TIMEOUT_MS = 30_000;
/** Mutated inputs injected into a disk image. */
const DISK_RUNS = Number(process.env.FUZZ_DISK_RUNS ?? 24);

/** xorshift32: the same sequence for the same seed on every machine. */
class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed >>> 0 || 1;
  }
  next(): number {
    this.x ^= this.x << 13;
    this.x >>>= 0;
    this.x ^= this.x >>> 17;
    this.x ^= this.x << 5;
    this.x >>>= 0;
    return this.x;
  }
  below(n: number): number {
    return this.next() % Math.max(1, n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)] as T;
  }
}

const LAYERS: HostileLayer[] = [
  [
    { name: 'etc', type: 'directory' },
    { name: 'etc/os-release', content: 'NAME=fuzz\n'.repeat(30) },
    { name: 'etc/link', type: 'symlink', linkname: '/etc/os-release' },
    { name: 'etc/hard', type: 'hardlink', linkname: 'etc/os-release' },
    { name: 'dev-null', type: 'char-device' },
    { name: 'fifo', type: 'fifo' },
    { name: 'bin', type: 'directory', xattrs: [{ name: 'user.fuzz', value: Buffer.from('x') }] },
    { name: 'bin/tool', content: Buffer.alloc(5000, 9), mode: 0o4755, uid: 70000 },
  ],
  [
    { name: 'etc', type: 'directory' },
    { name: 'etc/.wh.os-release', content: '' },
    { name: 'app', type: 'directory' },
    { name: 'app/.wh..wh..opq', content: '' },
    { name: 'app/main', content: 'fuzz upper layer\n'.repeat(100) },
  ],
];

/** Offsets of tar header blocks (ustar magic at 257), found by walking the archive. */
function headerOffsets(b: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off + 512 <= b.length; off += 512) {
    if (b.toString('latin1', off + 257, off + 262) === 'ustar') out.push(off);
  }
  return out;
}

function fixChecksum(b: Buffer, off: number): void {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (b[off + i] as number);
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', off + 148, 'latin1');
}

const FIELDS: [name: string, offset: number, length: number][] = [
  ['name', 0, 100],
  ['mode', 100, 8],
  ['uid', 108, 8],
  ['size', 124, 12],
  ['mtime', 136, 12],
  ['typeflag', 156, 1],
  ['linkname', 157, 100],
  ['devmajor', 329, 8],
  ['prefix', 345, 155],
];

const FIELD_VALUES = ['../../../../x', '/etc/passwd', '77777777777', '\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff', '0000000', 'x', '1', '2', '5', 'L', 'x', 'g', 'K', '', 'a/../../b', '99999999999'];

/** One mutation of seed bytes, and what it was (printed with a failure). */
function mutate(seed: Buffer, rng: Rng): { bytes: Buffer; what: string } {
  const b = Buffer.from(seed);
  const kind = rng.below(5);
  if (kind === 0) {
    const n = 1 + rng.below(8);
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      const p = rng.below(b.length);
      b[p] = (b[p] as number) ^ (1 + rng.below(255));
      at.push(p);
    }
    return { bytes: b, what: `byte flips at ${at.join(',')}` };
  }
  if (kind === 1) {
    const cut = rng.below(b.length);
    return { bytes: b.subarray(0, cut), what: `truncated to ${cut} bytes` };
  }
  if (kind === 2) {
    const at = rng.below(Math.floor(b.length / 512)) * 512;
    const block = Buffer.alloc(512 * (1 + rng.below(3)));
    const fill = rng.below(3);
    if (fill === 1) for (let i = 0; i < block.length; i++) block[i] = rng.below(256);
    if (fill === 2) b.copy(block, 0, rng.below(Math.floor(b.length / 512)) * 512);
    return { bytes: Buffer.concat([b.subarray(0, at), block, b.subarray(at)]), what: `${block.length} bytes (${['zero', 'random', 'copied'][fill]}) inserted at ${at}` };
  }
  const headers = headerOffsets(b);
  if (headers.length === 0) return { bytes: b, what: 'unchanged (no tar header visible)' };
  const off = rng.pick(headers);
  const [field, fo, fl] = rng.pick(FIELDS);
  const numeric = ['mode', 'uid', 'size', 'mtime', 'devmajor'].includes(field);
  // kind 3: a value the parser accepts (valid octal, or a name/type worth trying), so the run goes deeper; kind 4: random bytes.
  const text =
    kind === 3
      ? numeric
        ? (field === 'size' ? rng.below(1 << 16) : rng.next()).toString(8).padStart(fl - 1, '0').slice(-(fl - 1))
        : rng.pick(FIELD_VALUES)
      : Array.from({ length: fl }, () => String.fromCharCode(rng.below(256))).join('');
  const value = Buffer.from(text, 'latin1');
  b.fill(0, off + fo, off + fo + fl);
  value.copy(b, off + fo, 0, Math.min(fl, value.length));
  fixChecksum(b, off);
  return { bytes: b, what: `header at ${off}: ${field} set to ${JSON.stringify(value.toString('latin1').slice(0, 40))} (checksum fixed)` };
}

function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      out.push(path.relative(dir, p));
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

test(`fuzz: ${RUNS} mutated bundles, tarballs and archives end in exit 0 or one error line, no crash, no hang, no escape (seed ${SEED})`, { timeout: 600_000 }, async () => {
  requireTools('mount', 'umount', 'zstd', 'e2fsck');
  const base = tempDir('tpfuzz-');
  // On a tmpfs: every run ends with syncfs(2), cheap there.
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=256m,mode=0755', 'transplant-fuzz', base]);
  let worker = new CliWorker();
  try {
    const bundle = await bundleBytes(LAYERS);
    const archive = await dockerArchiveBytes(LAYERS);
    const tarball = await rootfsTarballBytes(LAYERS);
    // A bundle with tar-splits (so content is checked against them), made by extract from the archive.
    const archiveFile = path.join(base, 'seed-archive.tar');
    fs.writeFileSync(archiveFile, archive);
    const withSplit = path.join(base, 'seed-split.bundle');
    const x = await worker.run(['extract', '--from', archiveFile, '--image', 'hostile/case:1', '--output', withSplit]);
    assert.equal(x.code, 0, `making the seed bundle: ${x.stderr}`);
    const zst = spawnSync('zstd', ['-q', '-c'], { input: tarball }).stdout;
    const seeds: [string, Buffer][] = [
      ['bundle', bundle],
      ['bundle with tar-split', fs.readFileSync(withSplit)],
      ['gzip bundle', gzipSync(fs.readFileSync(withSplit))],
      ['data-root tarball', tarball],
      ['zstd data-root tarball', zst],
      ['docker save archive', archive],
    ];
    // Each seed as it is must inject cleanly: otherwise the fuzz would test nothing.
    for (const [name, bytes] of seeds) {
      const dir = fs.mkdtempSync(path.join(base, 'seed-'));
      const input = path.join(dir, 'input');
      fs.writeFileSync(input, bytes);
      fs.mkdirSync(path.join(dir, 'engine'));
      const r = await worker.run(['inject', input, '--engine-root', path.join(dir, 'engine')]);
      assert.equal(r.code, 0, `the unmutated ${name} injects: ${r.stderr}`);
      fs.rmSync(dir, { recursive: true, force: true });
    }

    const rng = new Rng(SEED);
    const failures: string[] = [];
    const outcomes = { ok: 0, refused: 0 };
    const cli = path.join(__dirname, '..', '..', 'bin', 'transplant');
    for (let i = 0; i < RUNS; i++) {
      const [seedName, seedBytes] = seeds[i % seeds.length] as [string, Buffer];
      const { bytes, what } = mutate(seedBytes, rng);
      const dir = fs.mkdtempSync(path.join(base, 'run-'));
      const input = path.join(dir, 'input');
      const target = path.join(dir, 'engine');
      const tmp = path.join(dir, 'tmp');
      fs.writeFileSync(input, bytes);
      fs.mkdirSync(target);
      fs.mkdirSync(tmp);
      const label = `run ${i} (seed ${SEED}): ${seedName}, ${what}`;
      // Mostly inject; every few runs extract, ls and verify read the same kind of input.
      const args =
        i % 7 === 3
          ? ['extract', '--from', input, '--image', 'hostile/case:1', '--output', path.join(target, 'out.bundle')]
          : i % 7 === 5
            ? ['ls', input]
            : i % 7 === 6 && seedName.includes('bundle')
              ? ['verify', input]
              : ['inject', input, '--engine-root', target];
      let r: { code: number; stdout: string; stderr: string };
      try {
        if (i % Math.floor(RUNS / PROCESS_RUNS) === 0) {
          const p = spawnSync(process.execPath, [cli, ...args], { env: { ...process.env, TMPDIR: tmp }, timeout: RUN_TIMEOUT_MS, killSignal: 'SIGKILL' });
          if (p.error) throw new Error(`did not finish within ${RUN_TIMEOUT_MS} ms (a hang): ${p.error.message}`);
          r = { code: p.status ?? 128, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
        } else {
          r = await worker.run(args, { TMPDIR: tmp }, RUN_TIMEOUT_MS);
        }
      } catch (e) {
        failures.push(`${label}: ${(e as Error).message.split('\n').slice(0, 8).join('\n')}`);
        await worker.close().catch(() => undefined);
        worker = new CliWorker();
        continue;
      }
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('warning: '));
      if (r.code === 0) outcomes.ok++;
      else if (r.code === 1) outcomes.refused++;
      if (r.code !== 0 && r.code !== 1) failures.push(`${label}: exit ${r.code}\n${r.stderr.slice(0, 1500)}`);
      else if (r.code === 1 && (lines.length !== 1 || !/^error: \S/.test(lines[0] as string))) failures.push(`${label}: not one error line\n${r.stderr.slice(0, 1500)}`);
      else if (/\n\s+at .+:\d+:\d+/.test(r.stderr)) failures.push(`${label}: a stack trace\n${r.stderr.slice(0, 1500)}`);
      // Nothing outside the target; a failed run leaves the (empty) target empty, no temp files.
      const around = listTree(dir).filter((p) => p !== 'engine' && !p.startsWith('engine/'));
      if (JSON.stringify(around) !== JSON.stringify(['input', 'tmp'])) failures.push(`${label}: files appeared beside the target: ${around.join(', ')}`);
      if (r.code === 1 && fs.readdirSync(target).length > 0) failures.push(`${label}: a failed run left ${listTree(target).slice(0, 5).join(', ')} in the target\n${r.stderr.slice(0, 300)}`);
      if (failures.length === 0 || !failures[failures.length - 1]?.startsWith(label)) fs.rmSync(dir, { recursive: true, force: true });
      if (failures.length >= 10) break;
    }
    // A few into a balenaOS disk image (the ext4 writer), written to --output: a failed run
    // leaves no output and no work files; a successful one leaves a clean file system.
    const imgDir = path.join(base, 'img');
    const img = buildBalenaImage(imgDir, 'fuzz.img', { deviceType: { slug: 'genericx86-64-ext', arch: 'amd64' } }).path;
    const imgHash = sha256File(img);
    const imgListing = fs.readdirSync(imgDir).sort().join(',');
    const diskOutcomes = { ok: 0, refused: 0 };
    for (let i = 0; i < DISK_RUNS && failures.length < 10; i++) {
      const [seedName, seedBytes] = seeds[i % 3 === 2 ? 5 : i % 3] as [string, Buffer];
      const { bytes, what } = mutate(seedBytes, rng);
      const label = `disk run ${i} (seed ${SEED}): ${seedName}, ${what}`;
      const input = path.join(base, 'disk-input');
      fs.writeFileSync(input, bytes);
      const out = path.join(imgDir, 'out.img');
      let r: { code: number; stdout: string; stderr: string };
      try {
        r = await worker.run(['inject', input, '--disk', img, '--output', out], {}, RUN_TIMEOUT_MS);
      } catch (e) {
        failures.push(`${label}: ${(e as Error).message.split('\n').slice(0, 8).join('\n')}`);
        await worker.close().catch(() => undefined);
        worker = new CliWorker();
        continue;
      }
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('warning: '));
      if (r.code !== 0 && r.code !== 1) failures.push(`${label}: exit ${r.code}\n${r.stderr.slice(0, 1500)}`);
      else if (r.code === 1 && (lines.length !== 1 || !/^error: \S/.test(lines[0] as string))) failures.push(`${label}: not one error line\n${r.stderr.slice(0, 1500)}`);
      else if (r.code === 1 && fs.readdirSync(imgDir).sort().join(',') !== imgListing) failures.push(`${label}: a failed run left ${fs.readdirSync(imgDir).join(', ')}`);
      else if (r.code === 0) {
        const fsck = e2fsckProblems(out, dataPartition(out), base);
        if (fsck !== '') failures.push(`${label}: resin-data not clean after an accepted input\n${fsck.slice(0, 1500)}`);
      }
      if (process.env.FUZZ_SHOW) process.stderr.write(`${label}: exit ${r.code} ${r.stderr.trim().slice(0, 200)}\n`);
      if (r.code === 0) diskOutcomes.ok++;
      else diskOutcomes.refused++;
      fs.rmSync(out, { force: true });
    }
    if (sha256File(img) !== imgHash) failures.push(`seed ${SEED}: the input disk image changed`);

    process.stderr.write(`# fuzz (seed ${SEED}): ${outcomes.ok} accepted, ${outcomes.refused} refused; into a disk image ${diskOutcomes.ok} accepted, ${diskOutcomes.refused} refused\n`);
    assert.deepEqual(failures, [], `FUZZ_SEED=${SEED}:\n${failures.join('\n---\n')}`);
    assert.ok(outcomes.refused > RUNS / 4, `most mutations are refused (${outcomes.refused} of ${RUNS}): the fuzz reached the readers`);
  } finally {
    await worker.close().catch(() => undefined);
    spawnSync('umount', ['-l', base]);
  }
});
