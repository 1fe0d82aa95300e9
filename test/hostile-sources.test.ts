/**
 * Hostile sources (issue 13, items 1, 2, 3, 14 and 15): an engine data-root directory whose
 * metadata files or store directories are symlinks out of it, or FIFOs; data-root tarballs
 * and bundles whose metadata is far larger than the engine would ever write; bundle
 * manifests with fields of the wrong type; images deeper than the engine allows. Each must
 * fail with one `error: …` line naming what was refused (and the limit or field hit), read
 * nothing outside the source, block on nothing, and write nothing.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { assertOneLineError, show } from './harness/cli.js';
import { run, runOk, requireTools, type RunResult } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { CliWorker, bundleBytes, dockerArchiveBytes, type HostileLayer } from './harness/hostile.js';
import { DOCKER, DOCKERD, withDockerd } from './harness/dockerd.js';
import { emptyHeader, type TarHeader } from '../src/tar/header.js';
import { TarPacker } from '../src/tar/pack.js';
import { TarParser } from '../src/tar/parse.js';
import { MemoryStoreReader } from '../src/sources/memory-reader.js';
import { verifyEngineRoot } from '../src/verify/verify.js';
import { layerCacheId, readImageConfig, readRepositories } from './harness/judge.js';
import { chainIds as chainIdsOf } from '../src/engine/digest.js';

const T = { timeout: 600_000 };
const CLI = path.join(__dirname, '..', '..', 'bin', 'transplant');
/** The shipped sample device's image (with tar-splits, as the engine wrote them). */
const SAMPLE = path.join(__dirname, '..', '..', 'sample', 'device-docker.tar.gz');
const REF = 'sample/hello:2.0';
const SECRET = `TOP-SECRET-${process.pid}-outside-the-data-root`;

let work: string;
let pristine: string;

/** The CLI as a process, killed after 60 s: a run that blocks (a FIFO) fails the test instead of hanging it. */
function cliProcess(args: string[], env: Record<string, string> = {}): RunResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TMPDIR: path.join(work, 'tmp'), ...env }, timeout: 60_000, killSignal: 'SIGKILL' });
  if (r.error && (r.error as NodeJS.ErrnoException).code !== 'ETIMEDOUT') throw r.error;
  return { code: r.status ?? 128, stdout: r.stdout.toString(), stderr: r.stderr.toString() + (r.status === null ? `\n(killed by ${r.signal}: it blocked)` : ''), stdoutBytes: r.stdout };
}

let worker: CliWorker | undefined;

/** The CLI's main() in a worker thread (no Node start per run); a run that blocks fails after 30 s. */
async function cli(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  worker ??= new CliWorker();
  try {
    const r = await worker.run(args, { TMPDIR: path.join(work, 'tmp'), ...env }, 30_000);
    return { ...r, stdoutBytes: Buffer.from(r.stdout) };
  } catch (e) {
    // A hang: this worker is stuck behind it, the next run gets a fresh one.
    void worker.close();
    worker = undefined;
    return { code: 128, stdout: '', stderr: (e as Error).message, stdoutBytes: Buffer.alloc(0) };
  }
}

/** Every file under dir (following nothing), concatenated: to look for the secret. */
function allBytes(dir: string): string {
  if (!fs.existsSync(dir)) return '';
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(fs.readFileSync(p, 'latin1'));
    }
  };
  if (fs.statSync(dir).isDirectory()) walk(dir);
  else out.push(fs.readFileSync(dir, 'latin1'));
  return out.join('\n');
}

before(async () => {
  requireTools('cp', 'mkfifo', 'mount', 'umount', 'tar');
  work = tempDir('tphsrc-');
  // A tmpfs of its own: many copies of an engine root, each run ending with syncfs.
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=768m,mode=0755', 'transplant-hostile-sources', work]);
  fs.mkdirSync(path.join(work, 'tmp'));
  pristine = path.join(work, 'pristine');
  fs.mkdirSync(pristine);
  const made = cliProcess(['preload', '--from', SAMPLE, '--image', REF, '--engine-root', pristine]);
  assert.equal(made.code, 0, show(made));
});

after(async () => {
  await worker?.close();
  if (work) spawnSync('umount', ['-l', work]);
});

interface Case {
  name: string;
  /** Changes the copy `src` of the engine root; `outside` is a directory beside it. */
  mutate: (src: string, outside: string, ctx: { imageHex: string; chainHex: string[]; cache: string }) => void;
  /** What the one error line must say. */
  says: RegExp;
}

function moveOut(src: string, rel: string, outside: string): string {
  const dest = path.join(outside, rel.replace(/\//g, '_'));
  fs.renameSync(path.join(src, rel), dest);
  fs.symlinkSync(dest, path.join(src, rel));
  return dest;
}

function linkToSecret(src: string, rel: string, outside: string): void {
  fs.rmSync(path.join(src, rel), { force: true });
  fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
  fs.symlinkSync(path.join(outside, 'secret'), path.join(src, rel));
}

function fifoAt(src: string, rel: string): void {
  fs.rmSync(path.join(src, rel), { force: true });
  fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
  runOk('mkfifo', [path.join(src, rel)]);
}

const SYMLINK = /symlink, never followed/;
const NOT_REGULAR = /is a FIFO, not a regular file/;

const CASES: Case[] = [
  { name: 'lastUpdated a symlink to a host file', says: SYMLINK, mutate: (s, o, c) => linkToSecret(s, `image/overlay2/imagedb/metadata/sha256/${c.imageHex}/lastUpdated`, o) },
  { name: 'tar-split.json.gz a symlink to a host file', says: SYMLINK, mutate: (s, o, c) => linkToSecret(s, `image/overlay2/layerdb/sha256/${c.chainHex[0]}/tar-split.json.gz`, o) },
  { name: 'layerdb size a symlink to a host file', says: SYMLINK, mutate: (s, o, c) => linkToSecret(s, `image/overlay2/layerdb/sha256/${c.chainHex[1]}/size`, o) },
  { name: 'the image config a symlink (to a copy outside)', says: SYMLINK, mutate: (s, o, c) => void moveOut(s, `image/overlay2/imagedb/content/sha256/${c.imageHex}`, o) },
  { name: 'repositories.json a symlink (to a copy outside)', says: SYMLINK, mutate: (s, o) => void moveOut(s, 'image/overlay2/repositories.json', o) },
  { name: 'overlay2/<cache>/link a symlink', says: SYMLINK, mutate: (s, o, c) => void moveOut(s, `overlay2/${c.cache}/link`, o) },
  {
    name: 'overlay2/ itself a symlink out of the root',
    says: SYMLINK,
    mutate: (s, o, c) => {
      const moved = moveOut(s, 'overlay2', o);
      fs.writeFileSync(path.join(moved, c.cache, 'diff', 'outside-secret'), SECRET);
    },
  },
  { name: 'image/ a symlink out of the root', says: SYMLINK, mutate: (s, o) => void moveOut(s, 'image', o) },
  { name: 'image/overlay2 a symlink out of the root', says: SYMLINK, mutate: (s, o) => void moveOut(s, 'image/overlay2', o) },
  { name: 'image/overlay2/layerdb a symlink out of the root', says: SYMLINK, mutate: (s, o) => void moveOut(s, 'image/overlay2/layerdb', o) },
  { name: 'image/overlay2/imagedb/content/sha256 a symlink out of the root', says: SYMLINK, mutate: (s, o) => void moveOut(s, 'image/overlay2/imagedb/content/sha256', o) },
  { name: 'repositories.json a FIFO', says: NOT_REGULAR, mutate: (s) => fifoAt(s, 'image/overlay2/repositories.json') },
  { name: 'the image config a FIFO', says: NOT_REGULAR, mutate: (s, _o, c) => fifoAt(s, `image/overlay2/imagedb/content/sha256/${c.imageHex}`) },
  { name: 'lastUpdated a FIFO', says: NOT_REGULAR, mutate: (s, _o, c) => fifoAt(s, `image/overlay2/imagedb/metadata/sha256/${c.imageHex}/lastUpdated`) },
  { name: 'layerdb cache-id a FIFO', says: NOT_REGULAR, mutate: (s, _o, c) => fifoAt(s, `image/overlay2/layerdb/sha256/${c.chainHex[0]}/cache-id`) },
  { name: 'tar-split.json.gz a FIFO', says: NOT_REGULAR, mutate: (s, _o, c) => fifoAt(s, `image/overlay2/layerdb/sha256/${c.chainHex[1]}/tar-split.json.gz`) },
];

function sampleImage(): { id: string; chainIds: string[]; ref: string } {
  const id = readRepositories(pristine).get(REF) as string;
  assert.ok(id, `${REF} is in the pristine root`);
  const config = readImageConfig(pristine, id);
  return { id, chainIds: chainIdsOf(config.rootfs.diff_ids), ref: REF };
}

test('an engine-root source whose metadata or store directories are symlinks out of it, or FIFOs: ls, verify, extract, inject and preload refuse with one line, read nothing outside, block on nothing', T, async () => {
  const img = sampleImage();
  const ctx = { imageHex: img.id.slice(7), chainHex: img.chainIds.map((c) => c.slice(7)), cache: layerCacheId(pristine, img.chainIds[0] as string) as string };
  // The untouched copy works with every command: the failures below come from the changes.
  {
    const out = path.join(work, 'ok.bundle');
    for (const r of [await cli(['ls', pristine]), await cli(['verify', pristine]), await cli(['extract', '--from', pristine, '--image', img.ref, '-o', out])]) assert.equal(r.code, 0, show(r));
    fs.rmSync(out);
  }
  const failures: string[] = [];
  for (const c of CASES) {
    const root = fs.mkdtempSync(path.join(work, 'case-'));
    const src = path.join(root, 'src');
    const outside = path.join(root, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'secret'), SECRET);
    runOk('cp', ['-a', pristine, src]);
    c.mutate(src, outside, ctx);
    const out = path.join(root, 'x.bundle');
    const tgt = path.join(root, 'tgt');
    const ptgt = path.join(root, 'ptgt');
    fs.mkdirSync(tgt);
    fs.mkdirSync(ptgt);
    const runs: [string, RunResult][] = [
      ['ls', await cli(['ls', src])],
      ['verify', await cli(['verify', src])],
      ['extract', await cli(['extract', '--from', src, '--image', img.ref, '-o', out])],
      ['inject', await cli(['inject', src, '--engine-root', tgt])],
      ['preload', await cli(['preload', '--from', src, '--image', img.ref, '--engine-root', ptgt])],
    ];
    for (const [cmd, r] of runs) {
      const what = `${c.name}: ${cmd}`;
      try {
        if (cmd === 'verify') {
          // verify lists every problem; its last line is the one error line.
          assert.equal(r.code, 1, `${what}: exit 1 expected\n${show(r)}`);
          assert.match(r.stderr.trim(), /^error: [^\n]+$/, `${what}: one error line\n${show(r)}`);
        } else assertOneLineError(r, what);
        assert.match(r.stdout + r.stderr, c.says, `${what}: the error says why\n${show(r)}`);
        assert.ok(!(r.stdout + r.stderr).includes(SECRET), `${what}: printed the secret`);
      } catch (e) {
        failures.push((e as Error).message.split('\n').slice(0, 4).join('\n'));
      }
    }
    if (fs.existsSync(out)) failures.push(`${c.name}: extract wrote a bundle${allBytes(out).includes(SECRET) ? ' holding the secret' : ''}`);
    for (const t of [tgt, ptgt]) {
      if (fs.readdirSync(t).length > 0) failures.push(`${c.name}: ${path.basename(t) === 'tgt' ? 'inject' : 'preload'} wrote into the target${allBytes(t).includes(SECRET) ? ', the secret among it' : ''}`);
    }
    fs.rmSync(root, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

test('verify of a layer whose diff/ file is a FIFO or a symlink out of the root: a problem reported, nothing outside read, no block', T, async () => {
  const img = sampleImage();
  const cache = layerCacheId(pristine, img.chainIds[0] as string) as string;
  const diff = path.join(pristine, 'overlay2', cache, 'diff');
  // The first regular file of the base layer, found by walking it.
  const firstFile = (rel: string): string | undefined => {
    for (const e of fs.readdirSync(path.join(diff, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isFile() && fs.statSync(path.join(diff, p)).size > 0) return p;
      if (e.isDirectory()) {
        const f = firstFile(p);
        if (f) return f;
      }
    }
    return undefined;
  };
  const victim = firstFile('') as string;
  assert.ok(victim, 'the sample has a regular file');
  const failures: string[] = [];
  for (const [what, swap] of [
    ['a FIFO', (f: string) => runOk('mkfifo', [f])],
    ['a symlink to a host file', (f: string) => fs.symlinkSync(path.join(work, 'secret'), f)],
  ] as const) {
    // The same bytes: only reading it through the symlink would pass.
    fs.copyFileSync(path.join(diff, victim), path.join(work, 'secret'));
    const src = fs.mkdtempSync(path.join(work, 'vsrc-'));
    runOk('cp', ['-a', `${pristine}/.`, src]);
    const file = path.join(src, 'overlay2', cache, 'diff', victim);
    fs.rmSync(file);
    swap(file);
    const r = await cli(['verify', src]);
    try {
      assert.equal(r.code, 1, `diff/ file ${what}: verify fails\n${show(r)}`);
      assert.ok(r.stdout.includes(path.basename(victim)), `diff/ file ${what}: the problem names the file\n${show(r)}`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 4).join('\n'));
    }
    fs.rmSync(src, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

test('a source named as a FIFO is refused at once; --apps as a FIFO nobody writes to is one line at once, and --apps <(…) is read (never blocks)', T, async () => {
  const fifo = path.join(work, 'source.fifo');
  runOk('mkfifo', [fifo]);
  const tgt = fs.mkdtempSync(path.join(work, 'atgt-'));
  for (const args of [['ls', fifo], ['extract', '--from', fifo, '-o', path.join(work, 'f.bundle')], ['verify', fifo]]) {
    const r = await cli(args);
    assertOneLineError(r, args.join(' '));
    assert.match(r.stderr, /FIFO, not a regular file/, show(r));
  }
  const none = await cli(['preload', '--from', SAMPLE, '--apps', fifo, '--resin-data', tgt]);
  assertOneLineError(none, '--apps <FIFO with no writer>');
  assert.match(none.stderr, /--apps .* is a pipe that gave nothing/, show(none));
  assert.deepEqual(fs.readdirSync(tgt), [], 'nothing written');

  // Process substitution, as a shell user writes it: bash hands over /dev/fd/N, a pipe.
  const apps = path.join(SAMPLE, '..', 'dashboard-state.json');
  const ok = run('bash', ['-c', `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} preload --from ${JSON.stringify(SAMPLE)} --apps <(sleep 0.3; cat ${JSON.stringify(apps)}) --resin-data ${JSON.stringify(tgt)}`], { timeoutMs: 120_000 });
  assert.equal(ok.code, 0, `--apps <(…)\n${ok.stdout}${ok.stderr}`);
  assert.ok(fs.existsSync(path.join(tgt, 'apps.json')), 'apps.json written from the pipe');
});

// ---- item 14: resource bounds -------------------------------------------------------------

/** A tar stream (our packer) collected into a Buffer. */
async function packTar(entries: { header: TarHeader; data?: Buffer }[], opts: { truncateAfterHeaderOf?: string } = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      cb();
    },
  });
  const tar = new TarPacker(out);
  for (const e of entries) {
    if (opts.truncateAfterHeaderOf === e.header.name) {
      // The header claims e.header.size bytes; the stream ends after a few of them.
      const probe = new TarPacker(out);
      await probe.add({ ...e.header, size: 0 });
      const all = Buffer.concat(parts);
      // The ustar header the probe wrote last (a size-0 entry has no data blocks after it).
      const block = all.length - 512;
      const h = Buffer.from(all.subarray(block, block + 512));
      h.write(e.header.size.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
      h.fill(' ', 148, 156);
      let sum = 0;
      for (const b of h) sum += b;
      h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
      return Buffer.concat([all.subarray(0, block), h, Buffer.alloc(4096)]);
    }
    await tar.add(e.header, e.data ?? Buffer.alloc(0));
  }
  await tar.finish();
  return Buffer.concat(parts);
}

function fileHeader(name: string, size: number, type: TarHeader['type'] = 'file'): TarHeader {
  return { ...emptyHeader(), name, type, size, mode: type === 'directory' ? 0o755 : 0o644, mtime: 1_600_000_000_123_456_789n };
}

/** The entries of a bundle, the manifest (first) edited. */
async function rewriteBundle(bundle: Buffer, edit: (m: Record<string, unknown>) => void, opts: { tarSplit?: (data: Buffer) => Buffer; truncateTarSplitAt?: number } = {}): Promise<Buffer> {
  const parser = new TarParser((async function* () {
    yield bundle;
  })());
  const entries: { header: TarHeader; data?: Buffer }[] = [];
  let truncate: string | undefined;
  for (;;) {
    const e = await parser.next();
    if (!e) break;
    const chunks: Buffer[] = [];
    for await (const c of e.content) chunks.push(c);
    let data: Buffer = Buffer.concat(chunks);
    const header = { ...e.header };
    if (entries.length === 0) {
      const m = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
      edit(m);
      data = Buffer.from(JSON.stringify(m));
    } else if (header.name.endsWith('/tar-split.json.gz')) {
      if (opts.tarSplit) data = opts.tarSplit(data);
      if (opts.truncateTarSplitAt !== undefined && truncate === undefined) {
        truncate = header.name;
        header.size = opts.truncateTarSplitAt;
      }
    }
    entries.push({ header: { ...header, size: truncate === header.name ? header.size : data.length }, data });
  }
  return packTar(entries, { truncateAfterHeaderOf: truncate });
}

test('a bundle manifest with a field of the wrong type is refused naming the field (no allocation, no TypeError), its tar-splits bounded', T, async () => {
  const base = path.join(work, 's.bundle');
  const made = cliProcess(['extract', '--from', SAMPLE, '--image', REF, '-o', base]);
  assert.equal(made.code, 0, show(made));
  const bundle = fs.readFileSync(base);
  const image = (m: Record<string, unknown>): Record<string, unknown> => (m.images as Record<string, unknown>[])[0] as Record<string, unknown>;
  const layer = (m: Record<string, unknown>): Record<string, unknown> => (m.layers as Record<string, unknown>[])[0] as Record<string, unknown>;
  const cases: [string, Promise<Buffer>, RegExp][] = [
    ['lastUpdated {"length": 100000000}', rewriteBundle(bundle, (m) => void (image(m).lastUpdated = { length: 100_000_000 })), /images\[0\]\.lastUpdated must be an RFC 3339 time, found an object/],
    ['lastUpdated a number', rewriteBundle(bundle, (m) => void (image(m).lastUpdated = 12345)), /images\[0\]\.lastUpdated must be an RFC 3339 time, found a number/],
    ['lastUpdated not a time', rewriteBundle(bundle, (m) => void (image(m).lastUpdated = 'TOP-SECRET\n')), /images\[0\]\.lastUpdated must be an RFC 3339 time/],
    ['a layer size as a string', rewriteBundle(bundle, (m) => void (layer(m).size = '12')), /layers\[0\]\.size must be a non-negative integer, found a string/],
    ['entries negative', rewriteBundle(bundle, (m) => void (layer(m).entries = -1)), /layers\[0\]\.entries must be a non-negative integer/],
    ['hasTarSplit a string', rewriteBundle(bundle, (m) => void (layer(m).hasTarSplit = 'yes')), /layers\[0\]\.hasTarSplit must be true or false/],
    ['a reference an object', rewriteBundle(bundle, (m) => void (image(m).references = [{ length: 5 }])), /images\[0\]\.references\[0\] must be a string, found an object/],
    ['chainIds an object', rewriteBundle(bundle, (m) => void (image(m).chainIds = { length: 1e9 })), /images\[0\]\.chainIds must be an array, found an object/],
    ['architecture a number', rewriteBundle(bundle, (m) => void (image(m).architecture = 64)), /images\[0\]\.architecture must be a string, found a number/],
    ['an image null', rewriteBundle(bundle, (m) => void (m.images = [null])), /images\[0\] must be an object, found null/],
    ['layers an object', rewriteBundle(bundle, (m) => void (m.layers = { length: 3 })), /layers must be an array, found an object/],
    ['createdAt a number', rewriteBundle(bundle, (m) => void (m.createdAt = 1)), /createdAt must be a string/],
    ['a tar-split that is not gzip', rewriteBundle(bundle, () => undefined, { tarSplit: (d) => Buffer.alloc(d.length + 1000) }), /tar-split of layer sha256:[0-9a-f]{64} is not gzip data/],
    ['a tar-split of 300 MiB', rewriteBundle(bundle, () => undefined, { truncateTarSplitAt: 300 << 20 }), /tar-split of layer sha256:[0-9a-f]{64} is 314572800 bytes, more than 256 MiB \(the limit on one layer's tar-split\.json\.gz\)/],
  ];
  const failures: string[] = [];
  for (const [what, bytes, says] of cases) {
    const file = path.join(work, 'case.bundle');
    fs.writeFileSync(file, await bytes);
    const tgt = fs.mkdtempSync(path.join(work, 'btgt-'));
    for (const args of [['inject', file, '--engine-root', tgt], ['ls', file], ['verify', file]]) {
      const r = await cli(args);
      try {
        assertOneLineError(r, `${what}: ${args[0]}`);
        assert.match(r.stderr, says, `${what}: ${args[0]}: the error names the field or limit\n${show(r)}`);
        assert.doesNotMatch(r.stderr, /TypeError|The first argument/, `${what}: a raw TypeError\n${show(r)}`);
      } catch (e) {
        failures.push((e as Error).message.split('\n').slice(0, 4).join('\n'));
      }
    }
    if (fs.readdirSync(tgt).length > 0) failures.push(`${what}: inject wrote into the target`);
    fs.rmSync(tgt, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

test('a data-root tarball with an over-large config, an over-large tar-split, or tar-splits more than the tarball could hold: refused naming the limit, TMPDIR not filled', T, async () => {
  const root = 'var/lib/docker/image/overlay2';
  const hex = (i: number): string => createHash('sha256').update(String(i)).digest('hex');
  const dirs = [`${root}/imagedb/content/sha256`, `${root}/layerdb/sha256`].map((d) => ({ header: fileHeader(d, 0, 'directory') }));
  const gzipZeros = (n: number): Buffer => Buffer.concat([Buffer.from([0x1f, 0x8b]), Buffer.alloc(n - 2)]);
  const cases: [string, Promise<Buffer>, RegExp][] = [
    ['a 60 MB image config', packTar([...dirs, { header: fileHeader(`${root}/imagedb/content/sha256/${hex(1)}`, 60_000_000) }], { truncateAfterHeaderOf: `${root}/imagedb/content/sha256/${hex(1)}` }), /is 60000000 bytes, more than 4 MiB \(the limit on an image config/],
    ['a 64 KiB+1 layerdb size file', packTar([...dirs, { header: fileHeader(`${root}/layerdb/sha256/${hex(2)}/size`, (64 << 10) + 1) }], { truncateAfterHeaderOf: `${root}/layerdb/sha256/${hex(2)}/size` }), /more than 64 KiB \(the limit on an engine metadata file/],
    ['a 500 MB tar-split', packTar([...dirs, { header: fileHeader(`${root}/layerdb/sha256/${hex(3)}/tar-split.json.gz`, 500_000_000) }], { truncateAfterHeaderOf: `${root}/layerdb/sha256/${hex(3)}/tar-split.json.gz` }), /is 500000000 bytes, more than 256 MiB \(the limit on one layer's tar-split\.json\.gz\)/],
    ['a tar-split that is not gzip', packTar([...dirs, { header: fileHeader(`${root}/layerdb/sha256/${hex(4)}/tar-split.json.gz`, 4096), data: Buffer.alloc(4096) }]), /tar-split\.json\.gz is not gzip data/],
    [
      'three 20 MiB tar-splits in a 100 kB tarball',
      packTar([...dirs, ...[5, 6, 7].map((i) => ({ header: fileHeader(`${root}/layerdb/sha256/${hex(i)}/tar-split.json.gz`, 20 << 20), data: gzipZeros(20 << 20) }))]),
      /its tar-split files hold more than the tarball itself \(\d+ bytes\) could/,
    ],
  ];
  const failures: string[] = [];
  for (const [what, bytes, says] of cases) {
    const file = path.join(work, 'case.tar.gz');
    fs.writeFileSync(file, gzipSync(await bytes));
    const tmp = path.join(work, 'tmp');
    const r = await cli(['ls', file]);
    try {
      assertOneLineError(r, what);
      assert.match(r.stderr, says, `${what}: the error names the limit\n${show(r)}`);
      assert.deepEqual(fs.readdirSync(tmp), [], `${what}: temp files left in TMPDIR`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 4).join('\n'));
    }
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

// ---- item 15: layer depth -----------------------------------------------------------------

test('an image deeper than the engine allows (126 layers: moby maxLayerDepth 125) is refused by inject, preload, extract and verify with the engine\'s reason, nothing written; 125 layers are taken', T, async () => {
  const layers = (n: number): HostileLayer[] => Array.from({ length: n }, (_, i) => [{ name: `f${i}`, content: `layer ${i}` }]);
  const deep = path.join(work, 'deep.bundle');
  fs.writeFileSync(deep, await bundleBytes(layers(126), { ref: 'deep/image:126' }));
  const says = /image deep\/image:126 has 126 layers; the engine refuses chains deeper than 125 layers \(max depth exceeded/;
  const tgt = fs.mkdtempSync(path.join(work, 'dtgt-'));
  const out = path.join(work, 'deep-out.bundle');
  for (const args of [['inject', deep, '--engine-root', tgt], ['preload', '--from', deep, '--image', 'deep/image:126', '--engine-root', tgt], ['extract', '--from', deep, '--image', 'deep/image:126', '-o', out]]) {
    const r = await cli(args);
    assertOneLineError(r, args[0] as string);
    assert.match(r.stderr, says, show(r));
  }
  assert.deepEqual(fs.readdirSync(tgt), [], 'nothing written into the target');
  assert.ok(!fs.existsSync(out), 'no bundle written');
  const v = await cli(['verify', deep]);
  assert.equal(v.code, 1, show(v));
  assert.match(v.stdout, says, show(v));
  // verify of an engine root holding such an image (made by hand: nothing here writes one).
  const reader = new MemoryStoreReader('deep-root');
  const diffIds = Array.from({ length: 126 }, (_, i) => `sha256:${createHash('sha256').update(`d${i}`).digest('hex')}`);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  const id = createHash('sha256').update(config).digest('hex');
  reader.addFile(`image/overlay2/imagedb/content/sha256/${id}`, config);
  reader.addFile('image/overlay2/repositories.json', Buffer.from(JSON.stringify({ Repositories: { 'deep/image': { 'deep/image:126': `sha256:${id}` } } })));
  const report = await verifyEngineRoot(reader, '', { metadataOnly: true });
  assert.ok(report.problems.some((p) => says.test(p)), report.problems.join('\n'));
  // The deepest the engine takes.
  const ok = path.join(work, 'ok125.bundle');
  fs.writeFileSync(ok, await bundleBytes(layers(125), { ref: 'deep/image:125' }));
  const r = await cli(['inject', ok, '--engine-root', tgt]);
  assert.equal(r.code, 0, show(r));
  fs.rmSync(tgt, { recursive: true, force: true });
});

test('the depth limit is the engine\'s own: a real dockerd 20.10 loads a 125-layer image and refuses a 126-layer one with "max depth exceeded"', T, async () => {
  requireTools(DOCKERD, DOCKER);
  const layers = (n: number): HostileLayer[] => Array.from({ length: n }, (_, i) => [{ name: `f${i}`, content: `layer ${i}` }]);
  const dataRoot = fs.mkdtempSync(path.join(work, 'engine-'));
  await withDockerd(dataRoot, async (d) => {
    for (const n of [125, 126]) {
      const archive = path.join(work, `deep${n}.tar`);
      fs.writeFileSync(archive, await dockerArchiveBytes(layers(n), { ref: `deep/engine:${n}` }));
      const r = d.dockerRaw(['load', '-i', archive]);
      if (n === 125) assert.equal(r.code, 0, `docker load of ${n} layers: ${r.stderr}`);
      else {
        assert.notEqual(r.code, 0, `docker load of ${n} layers succeeded`);
        assert.match(r.stderr, /max depth exceeded/, r.stderr);
      }
    }
  });
});
