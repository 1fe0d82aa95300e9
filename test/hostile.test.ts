/**
 * Hostile and broken input (issue "Hostile and broken input, interrupted runs", parts 1 and 2):
 * every path trick of test/harness/hostile.ts, packed as a bundle, a data-root tarball and a
 * `docker save` archive, injected as root by the CLI into a scratch engine root and into a
 * balenaOS disk image; nothing may appear outside the target (a canary directory beside it,
 * the whole temp root of the run, its TMPDIR). Broken inputs each fail with one `error: …`
 * line naming the input, and leave the target as it was.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { assertOneLineError, show } from './harness/cli.js';
import { runOk, requireTools, type RunResult } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { buildBalenaImage } from './harness/balena-image.js';
import { assertE2fsckClean, sha256File, withMountedData } from './harness/disk-judge.js';
import { diffSnapshots, snapshotTree, layerCacheId } from './harness/judge.js';
import {
  bundleBytes,
  containerBytes,
  containerFileName,
  dockerArchiveBytes,
  hostileCases,
  rootfsTarballBytes,
  CliWorker,
  syntheticImage,
  type Container,
  type HostileCase,
  type HostileLayer,
} from './harness/hostile.js';

// Generous: on a loaded 2-core machine the disk-image case alone takes 5–7 minutes (not a speed check).
const T = { timeout: 1_200_000 };
const CONTAINERS: Container[] = ['bundle', 'tarball', 'archive'];
/** From a layer's diff/ in <root>/t/engine/overlay2/<cache>/diff up to <root>. */
const UPS = '../'.repeat(5);

interface Scratch {
  root: string;
  canary: string;
  target: string;
  tmp: string;
}

let scratchBase: string | undefined;
let worker: CliWorker | undefined;

/**
 * Scratch roots live on a tmpfs of their own: every run ends with syncfs(2) of the target's
 * file system, which on a busy shared disk costs seconds; on tmpfs it costs nothing.
 */
function base(): string {
  if (scratchBase) return scratchBase;
  requireTools('mount', 'umount');
  const dir = tempDir('tphostile-fs-');
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=512m,mode=0755', 'transplant-hostile', dir]);
  scratchBase = dir;
  return dir;
}

after(async () => {
  await worker?.close();
  // Before the temp dirs are removed at exit.
  if (scratchBase) spawnSync('umount', ['-l', scratchBase]);
});

function scratch(prefix: string): Scratch {
  const root = fs.mkdtempSync(path.join(base(), prefix));
  const canary = path.join(root, 'canary');
  fs.mkdirSync(canary);
  fs.writeFileSync(path.join(canary, 'file'), 'canary');
  const target = path.join(root, 't', 'engine');
  fs.mkdirSync(target, { recursive: true });
  const tmp = path.join(root, 'tmp');
  fs.mkdirSync(tmp);
  return { root, canary, target, tmp };
}

/**
 * Runs the CLI with TMPDIR inside the scratch root, so its own temp files are in view: as a
 * process (`node bin/transplant`) when asked, else main() in this process (same code).
 */
async function cli(s: Scratch, args: string[], asProcess: boolean): Promise<RunResult> {
  if (!asProcess) {
    worker ??= new CliWorker();
    const r = await worker.run(args, { TMPDIR: s.tmp });
    return { ...r, stdoutBytes: Buffer.from(r.stdout) };
  }
  const cliPath = path.join(__dirname, '..', '..', 'bin', 'transplant');
  const r = spawnSync(process.execPath, [cliPath, ...args], { env: { ...process.env, TMPDIR: s.tmp }, timeout: 120_000, killSignal: 'SIGKILL' });
  if (r.error) throw r.error;
  return { code: r.status ?? 128, stdout: r.stdout.toString(), stderr: r.stderr.toString(), stdoutBytes: r.stdout };
}

/** Exit 0, or exit 1 with one `error:` line; never a crash. */
function assertCleanOutcome(r: RunResult, what: string): void {
  assert.ok(r.code === 0 || r.code === 1, `${what}: exit 0 or 1 expected\n${show(r)}`);
  if (r.code === 1) assertOneLineError(r, what);
  assert.ok(!/\n\s+at .+:\d+:\d+/.test(r.stderr), `${what}: a stack trace was printed\n${show(r)}`);
}

/** Names containing "pwned" anywhere under dir, except below the excluded dirs. */
function findPwned(dir: string, exclude: string[]): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch (e) {
      // A disk image may hold paths longer than the host's PATH_MAX (ext4 has no such limit).
      if ((e as NodeJS.ErrnoException).code === 'ENAMETOOLONG') return;
      throw e;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (exclude.includes(p)) continue;
      if (e.name.includes('pwned')) out.push(p);
      if (e.isDirectory() && !e.isSymbolicLink()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/**
 * Everything in the scratch root except the target, every attribute but directory times
 * (a cheap in-process walk: the judge's snapshotTree runs find/getfattr, too slow for ~60 runs).
 */
function outside(s: Scratch): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d)) {
      const p = path.join(d, name);
      if (p === path.dirname(s.target)) continue;
      const st = fs.lstatSync(p, { bigint: true });
      let what = `${st.mode.toString(8)} ${st.uid}:${st.gid} nlink ${st.nlink}`;
      if (st.isFile()) what += ` ${st.size} ${st.mtimeNs} ${createHash('sha256').update(fs.readFileSync(p)).digest('hex')}`;
      else if (st.isSymbolicLink()) what += ` -> ${fs.readlinkSync(p)} ${st.mtimeNs}`;
      else if (!st.isDirectory()) what += ` rdev ${st.rdev} ${st.mtimeNs}`;
      out.set(path.relative(s.root, p), what);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(s.root);
  return out;
}

function mapDiff(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) if (a.get(k) !== b.get(k)) out.push(`${k}: ${a.get(k) ?? '(absent)'} -> ${b.get(k) ?? '(absent)'}`);
  return out;
}

/** The diff dir of the image's top layer in an engine root, when the injection wrote it. */
function topDiff(engineRoot: string, chainIds: string[]): string | undefined {
  const top = chainIds[chainIds.length - 1] as string;
  const cache = layerCacheId(engineRoot, top);
  return cache === undefined ? undefined : path.join(engineRoot, 'overlay2', cache, 'diff');
}

/** Builds the named case aimed at a fresh scratch root's canary, injects it and judges the outcome. */
async function runCase(kind: Container, name: string, asProcess: boolean): Promise<void> {
  const s = scratch('tphostile-');
  const c = hostileCases({ canary: s.canary, ups: UPS }).find((x) => x.name === name) as HostileCase;
  const what = `${kind}: ${c.name}`;
  const input = path.join(s.root, containerFileName(kind));
  fs.writeFileSync(input, await containerBytes(kind, c.layers));
  const before = outside(s);
  const r = await cli(s, ['inject', input, '--engine-root', s.target], asProcess);
  assertCleanOutcome(r, what);
  if (process.env.HOSTILE_SHOW) process.stderr.write(`${what}: exit ${r.code} ${r.stderr.trim()}\n`);
  assert.deepEqual(mapDiff(before, outside(s)), [], `${what}: something changed outside the target\n${show(r)}`);
  assert.deepEqual(fs.readdirSync(s.tmp), [], `${what}: temp files left behind in TMPDIR`);
  assert.deepEqual(findPwned(s.root, [s.target]), [], `${what}: a file escaped`);
  if (r.code === 1) {
    assert.notEqual(c.expect, 'accepted', `${what}: refused but should be accepted\n${show(r)}`);
    // The target was an empty directory: everything the run made is taken back.
    assert.deepEqual(fs.readdirSync(s.target), [], `${what}: a refused input changed the target`);
  } else {
    assert.notEqual(c.expect, 'refused', `${what}: accepted but must be refused\n${show(r)}`);
    const img = await syntheticImage(c.layers);
    const diff = topDiff(s.target, img.chainIds);
    assert.ok(diff !== undefined && fs.existsSync(diff), `${what}: accepted, yet the layer is not in the target\n${show(r)}`);
    if (c.check) assert.deepEqual(c.check(diff), [], what);
  }
  fs.rmSync(s.root, { recursive: true, force: true });
}

for (const kind of CONTAINERS) {
  test(`hostile ${kind}: nothing is written outside the target, whatever the path tricks`, T, async () => {
    const failures: string[] = [];
    let n = 0;
    for (const c of hostileCases({ canary: '/unused', ups: UPS })) {
      if (c.only && !c.only.includes(kind)) continue;
      try {
        // A few through the real CLI process, the rest in-process.
        await runCase(kind, c.name, n++ % 6 === 0);
      } catch (e) {
        failures.push((e as Error).message.split('\n').slice(0, 6).join('\n'));
      }
    }
    assert.deepEqual(failures, [], failures.join('\n---\n'));
  });
}

// ---- guarantee 2: broken inputs fail in one line and leave the target as it was ----------

/** An image good enough to run through every reader: a few files, a symlink, a second layer. */
const GOOD: HostileLayer[] = [
  [
    { name: 'etc', type: 'directory' },
    { name: 'etc/hostname', content: 'good-content-marker\n'.repeat(50) },
    { name: 'etc/link', type: 'symlink', linkname: '/etc/hostname' },
    { name: 'big', content: Buffer.alloc(300_000, 7) },
  ],
  [{ name: 'app', type: 'directory' }, { name: 'app/run', content: 'upper-layer-marker'.repeat(1000), mode: 0o755 }],
];

function flipAt(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at] = (c[at] as number) ^ 0x5a;
  return c;
}

function flipString(b: Buffer, needle: string): Buffer {
  const at = b.indexOf(needle);
  assert.ok(at >= 0, `the input holds ${needle}`);
  return flipAt(b, at + 3);
}

test('broken inputs: each fails with one line naming the input, exit 1, and the target is left as it was', T, async () => {
  requireTools('zstd');
  const s = scratch('tpbroken-');
  // A target that already holds an image: a failed run must leave it exactly so.
  const prior = path.join(s.root, 'prior.bundle');
  fs.writeFileSync(prior, await bundleBytes([[{ name: 'prior', content: 'prior image' }]], { references: ['prior/image:1', `prior/image@sha256:${'a'.repeat(64)}`] }));
  const first = await cli(s, ['inject', prior, '--engine-root', s.target], false);
  assert.equal(first.code, 0, show(first));
  const pristine = path.join(s.root, 'pristine');
  runOk('cp', ['-a', s.target, pristine]);
  const before = snapshotTree(s.target);

  const bundle = await bundleBytes(GOOD);
  const tarball = await rootfsTarballBytes(GOOD);
  const archive = await dockerArchiveBytes(GOOD);
  const img = await syntheticImage(GOOD);
  const zst = (b: Buffer): Buffer => spawnSync('zstd', ['-q', '-c'], { input: b }).stdout;
  const gz = gzipSync(bundle);
  const cases: [string, string, Buffer, RegExp?][] = [
    ['a gzip bundle with a corrupt deflate stream', 'corrupt.bundle.gz', flipAt(gz, Math.floor(gz.length / 2))],
    ['a gzip bundle cut short', 'cut.bundle.gz', gz.subarray(0, Math.floor(gz.length * 0.6))],
    ['a zstd data-root tarball with a corrupt frame', 'corrupt.tar.zst', flipAt(zst(tarball), Math.floor(zst(tarball).length / 2))],
    ['a zstd data-root tarball cut short', 'cut.tar.zst', zst(tarball).subarray(0, Math.floor(zst(tarball).length * 0.7))],
    ['a data-root tarball cut inside a file', 'cut.tar', tarball.subarray(0, tarball.indexOf('upper-layer-marker') + 100)],
    ['a bundle cut inside a layer', 'cut.bundle', bundle.subarray(0, bundle.indexOf('upper-layer-marker') + 100)],
    ['a bundle cut before its trailer', 'notrailer.bundle', bundle.subarray(0, bundle.indexOf('transplant-bundle.end') - 512)],
    ['a bundle whose config does not match its image ID', 'config.bundle', flipString(bundle, '"rootfs"'), /does not match its ID/],
    ['a data-root tarball whose config does not match its image ID', 'config.tar', flipString(tarball, '"rootfs"')],
    ['a bundle with a damaged tar header', 'header.bundle', flipAt(bundle, bundle.indexOf('upper-layer-marker') - 512 + 20)],
    ['a bundle whose manifest is not JSON', 'json.bundle', flipString(bundle, '"format"')],
    ['a docker archive whose layer does not match its DiffID', 'diffid.tar', flipString(archive, 'upper-layer-marker'), /DiffID|digest|match/i],
    ['a docker archive cut short', 'cut-archive.tar', archive.subarray(0, Math.floor(archive.length * 0.5))],
    ['a docker archive that lacks a layer named in manifest.json', 'nolayer.tar', await dockerArchiveBytes(GOOD, { manifestLayers: ['missing/layer.tar', 'other/layer.tar'] }), /missing\/layer\.tar/],
    ['a data-root tarball that lacks a layer\'s data', 'nodata.tar', await rootfsTarballBytesWithout(GOOD, 1), /layer|data|missing/i],
    ['a bundle with an invalid reference', 'ref.bundle', await bundleBytes(GOOD, { references: ['../../etc:1'] }), /reference/],
    ['a bundle with a reference holding a newline', 'newline.bundle', await bundleBytes(GOOD, { references: ['ok/name:1', 'line\nbreak:1'] }), /reference/],
    ['a bundle whose digest reference the target gives to another image', 'digest.bundle', await bundleBytes(GOOD, { references: [`prior/image@sha256:${'a'.repeat(64)}`] }), /digest/],
    ['a bundle whose image needs a layer it lacks', 'nolayer.bundle', bundleMissingLayer(bundle, img.chainIds[1] as string), /lacks|layer/i],
    ['a bundle whose layer DiffID is not the config\'s (a broken chain)', 'chain.bundle', replaceSame(bundle, `"diffId":"${img.diffIds[1]}"`, `"diffId":"sha256:${'1'.repeat(64)}"`), /DiffID/],
    ['a bundle whose image lists its layers out of order', 'order.bundle', replaceSame(bundle, `"chainIds":["${img.chainIds[0]}","${img.chainIds[1]}"]`, `"chainIds":["${img.chainIds[1]}","${img.chainIds[0]}"]`), /chain/],
    ['a data-root tarball whose layer names the wrong parent', 'parent.tar', replaceSame(tarball, '/parent', '/parent', (t) => replaceParent(t, img.chainIds[0] as string)), /parent/],
  ];
  const failures: string[] = [];
  for (const [what, name, bytes, mention] of cases) {
    // Each case on a fresh copy of the target (an input wrongly accepted must not hide the next case).
    fs.rmSync(s.target, { recursive: true, force: true });
    runOk('cp', ['-a', pristine, s.target]);
    const input = path.join(s.root, name);
    fs.writeFileSync(input, bytes);
    const r = await cli(s, ['inject', input, '--engine-root', s.target], failures.length === 0 && what.includes('zstd'));
    try {
      assertOneLineError(r, what);
      assert.ok(r.stderr.includes(name), `${what}: the error names the input ${name}\n${show(r)}`);
      if (mention) assert.match(r.stderr, mention, `${what}: the error says what is wrong\n${show(r)}`);
      assert.deepEqual(diffSnapshots(before, snapshotTree(s.target), { directoryTimes: false }), [], `${what}: the target changed`);
      assert.deepEqual(fs.readdirSync(s.tmp), [], `${what}: temp files left in TMPDIR`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 5).join('\n'));
    }
    // extract from the same input writes no bundle, not even a partial one.
    const outBundle = path.join(s.root, 'out', 'x.bundle');
    fs.mkdirSync(path.dirname(outBundle), { recursive: true });
    const x = await cli(s, ['extract', '--from', input, '--image', 'hostile/case:1', '--output', outBundle], false);
    try {
      assertOneLineError(x, `extract from ${what}`);
      assert.deepEqual(fs.readdirSync(path.dirname(outBundle)), [], `extract from ${what}: left a file behind`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 5).join('\n'));
    }
    fs.rmSync(path.dirname(outBundle), { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

/** A data-root tarball whose layer `index` has no overlay2/<cache>/diff entries. */
async function rootfsTarballBytesWithout(layers: HostileLayer[], index: number): Promise<Buffer> {
  const cacheIds = layers.map((_, i) => (i === index ? 'f'.repeat(64) : createHash('sha256').update(`layer-${i}`).digest('hex')));
  // Rebuild with the layer's cache-id pointing at a directory the tarball does not hold.
  const withOther = await rootfsTarballBytes(layers, { cacheIds: cacheIds.map((c, i) => (i === index ? 'e'.repeat(64) : c)) });
  const s = withOther.toString('latin1');
  // The layerdb cache-id file says eee…; the overlay2 directory is eee… too: rename the directory only.
  const renamed = s.split(`overlay2/${'e'.repeat(64)}`).join(`overlay2/${'d'.repeat(64)}`);
  return fixTarChecksums(Buffer.from(renamed, 'latin1'));
}

/** Recomputes every ustar header checksum (after names were edited in place). */
function fixTarChecksums(b: Buffer): Buffer {
  let off = 0;
  while (off + 512 <= b.length) {
    const block = b.subarray(off, off + 512);
    if (block.every((x) => x === 0)) break;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (block[i] as number);
    block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    const size = parseInt(block.toString('latin1', 124, 136).replace(/[\0 ]/g, '') || '0', 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return b;
}

/** The bundle with the layer's chainId replaced in the manifest's layer list (the image still needs it). */
function bundleMissingLayer(bundle: Buffer, chainId: string): Buffer {
  const text = bundle.toString('latin1');
  const manifestEnd = text.indexOf('images/');
  const head = text.slice(0, manifestEnd);
  // Same length: the image's chainIds still name the layer, the layer list names another.
  const layersAt = head.indexOf('"layers"');
  const at = head.indexOf(`"chainId":"${chainId}"`, layersAt);
  assert.ok(at > 0, 'the manifest lists the layer');
  const changed = head.slice(0, at) + `"chainId":"sha256:${'0'.repeat(64)}"` + head.slice(at + `"chainId":"${chainId}"`.length);
  return Buffer.from(changed + text.slice(manifestEnd), 'latin1');
}

test('no space left on the target: one line, exit 1, the target left as it was (planned and real ENOSPC)', T, async () => {
  const s = scratch('tpfull-');
  const small = path.join(s.root, 'small');
  fs.mkdirSync(small);
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0755', 'transplant-full', small]);
  try {
    const target = path.join(small, 'engine');
    fs.mkdirSync(target);
    const prior = path.join(s.root, 'prior.bundle');
    fs.writeFileSync(prior, await bundleBytes([[{ name: 'prior', content: 'prior image' }]], { ref: 'prior/image:1' }));
    const first = await cli(s, ['inject', prior, '--engine-root', target], false);
    assert.equal(first.code, 0, show(first));
    const before = snapshotTree(target);
    const layers: HostileLayer[] = [[{ name: 'a', content: Buffer.alloc(1_500_000, 1) }, { name: 'b', content: Buffer.alloc(1_500_000, 2) }]];
    const honest = path.join(s.root, 'big.bundle');
    fs.writeFileSync(honest, await bundleBytes(layers));
    // The same bundle whose manifest understates the bytes: the check before writing passes, the write itself runs out of room.
    const lying = path.join(s.root, 'lying.bundle');
    const text = (await bundleBytes(layers)).toString('latin1');
    fs.writeFileSync(lying, Buffer.from(text.replace('"bytes":3000000', '"bytes":3      ').replace('"size":3000000', '"size":3      '), 'latin1'));
    assert.ok(fs.readFileSync(lying).includes('"bytes":3      '), 'the manifest was edited');
    for (const [input, what, mention] of [[honest, 'a bundle too big for the target', /room|space/i], [lying, 'a bundle whose manifest understates its size', /space|room|full/i]] as const) {
      const r = await cli(s, ['inject', input, '--engine-root', target], input === lying);
      assertOneLineError(r, what);
      if (process.env.HOSTILE_SHOW) process.stderr.write(`${what}: ${r.stderr}`);
      assert.match(r.stderr, mention, `${what}: the error says the target is full\n${show(r)}`);
      assert.deepEqual(diffSnapshots(before, snapshotTree(target), { directoryTimes: false }), [], `${what}: the target changed`);
    }
  } finally {
    runOk('umount', [small]);
  }
});

// ---- the same tricks into a balenaOS disk image (written without mounting) ---------------

test('hostile input into a disk image: refused or stored inside resin-data, e2fsck clean, the input image untouched, nothing on the host', T, async () => {
  requireTools('e2fsck', 'mount', 'umount');
  const s = scratch('tphostdisk-');
  const img = buildBalenaImage(path.join(s.root, 'img'), 'balena.img', { deviceType: { slug: 'genericx86-64-ext', arch: 'amd64' } }).path;
  const imgHash = sha256File(img);
  const failures: string[] = [];
  let n = 0;
  for (const kind of ['bundle', 'tarball', 'archive'] as const) {
    for (const c of hostileCases({ canary: s.canary, ups: UPS })) {
      if (c.only && !c.only.includes(kind)) continue;
      const what = `disk, ${kind}: ${c.name}`;
      const input = path.join(s.root, containerFileName(kind));
      fs.writeFileSync(input, await containerBytes(kind, c.layers));
      const out = path.join(s.root, 'out.img');
      const before = outside(s);
      try {
        const r = await cli(s, ['inject', input, '--disk', img, '--output', out], n++ % 10 === 0);
        assertCleanOutcome(r, what);
        const changed = mapDiff(before, outside(s)).filter((l) => !l.startsWith('out.img:'));
        assert.deepEqual(changed, [], `${what}: something changed outside the target\n${show(r)}`);
        assert.deepEqual(findPwned(s.root, []), [], `${what}: a file escaped onto the host`);
        assert.deepEqual(fs.readdirSync(s.tmp), [], `${what}: temp files left in TMPDIR`);
        if (r.code === 1) {
          assert.notEqual(c.expect, 'accepted', `${what}: refused but should be accepted\n${show(r)}`);
          assert.ok(!fs.existsSync(out), `${what}: a refused run left ${out}`);
        } else {
          assert.notEqual(c.expect, 'refused', `${what}: accepted but must be refused\n${show(r)}`);
          assertE2fsckClean(out, s.root);
          const img2 = await syntheticImage(c.layers);
          await withMountedData(out, s.root, (mnt) => {
            // Inside the image nothing may land outside the layer's own diff/.
            const escaped = findPwned(mnt, []).filter((p) => !/\/docker\/overlay2\/[0-9a-f]{64}\/diff\//.test(p));
            assert.deepEqual(escaped, [], `${what}: written outside a diff/ inside resin-data`);
            const diff = topDiff(path.join(mnt, 'docker'), img2.chainIds);
            assert.ok(diff !== undefined, `${what}: accepted, yet the layer is not in the image`);
            if (c.check) assert.deepEqual(c.check(diff), [], what);
          }, { readOnly: true });
        }
      } catch (e) {
        failures.push((e as Error).message.split('\n').slice(0, 6).join('\n'));
      }
      fs.rmSync(out, { force: true });
    }
  }
  assert.equal(sha256File(img), imgHash, 'the input disk image is untouched');
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

test('an engine-root directory whose layer directory is a symlink out of it is refused, nothing outside is read', T, async () => {
  const s = scratch('tpsrcdir-');
  const src = path.join(s.root, 'src');
  fs.mkdirSync(src);
  const input = path.join(s.root, 'in.bundle');
  fs.writeFileSync(input, await bundleBytes([[{ name: 'ok', content: 'layer content' }]]));
  const made = await cli(s, ['inject', input, '--engine-root', src], false);
  assert.equal(made.code, 0, show(made));
  const img = await syntheticImage([[{ name: 'ok', content: 'layer content' }]]);
  const cache = layerCacheId(src, img.chainIds[0] as string) as string;
  // Outside the data root: a directory shaped like a layer, holding a secret.
  fs.mkdirSync(path.join(s.canary, 'layer', 'diff'), { recursive: true });
  fs.writeFileSync(path.join(s.canary, 'layer', 'diff', 'secret'), 'outside-secret');
  const failures: string[] = [];
  for (const [what, swap] of [
    ['diff/ is a symlink', () => {
      fs.rmSync(path.join(src, 'overlay2', cache, 'diff'), { recursive: true });
      fs.symlinkSync(path.join(s.canary, 'layer', 'diff'), path.join(src, 'overlay2', cache, 'diff'));
    }],
    ['overlay2/<cache> is a symlink', () => {
      fs.rmSync(path.join(src, 'overlay2', cache), { recursive: true, force: true });
      fs.symlinkSync(path.join(s.canary, 'layer'), path.join(src, 'overlay2', cache));
    }],
  ] as const) {
    swap();
    const out = path.join(s.root, 'x.bundle');
    const target = path.join(s.root, 't2');
    fs.mkdirSync(target, { recursive: true });
    const x = await cli(s, ['extract', '--from', src, '--image', img.ref, '--output', out], false);
    const i = await cli(s, ['inject', src, '--engine-root', target], false);
    try {
      assertOneLineError(x, `extract, ${what}`);
      assert.match(x.stderr, /symlink/, `extract, ${what}: the error says why\n${show(x)}`);
      assert.ok(!fs.existsSync(out), `extract, ${what}: wrote a bundle`);
      assertOneLineError(i, `inject, ${what}`);
      assert.deepEqual(fs.readdirSync(target), [], `inject, ${what}: the target changed`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 5).join('\n'));
    }
    fs.rmSync(out, { force: true });
    fs.rmSync(target, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});

/** The input with one string replaced by another of the same length (offsets stay valid). */
function replaceSame(b: Buffer, from: string, to: string, edit?: (text: string) => string): Buffer {
  const text = b.toString('latin1');
  assert.ok(text.includes(from), `the input holds ${from.slice(0, 60)}`);
  assert.equal(from.length, to.length);
  return Buffer.from(edit ? edit(text) : text.split(from).join(to), 'latin1');
}

/** A data-root tarball whose upper layer's parent file names another (valid-looking) ChainID. */
function replaceParent(text: string, parent: string): string {
  const at = text.indexOf(parent, text.indexOf('/parent'));
  assert.ok(at > 0, 'the tarball holds a parent file');
  return text.slice(0, at) + `sha256:${'2'.repeat(64)}` + text.slice(at + parent.length);
}

test('a target whose store directories are symlinks out of it: refused or written beside them, never through them', T, async () => {
  const failures: string[] = [];
  const layers: HostileLayer[] = [[{ name: 'ok', content: 'content' }]];
  for (const link of ['overlay2', 'overlay2/l', 'image', 'image/overlay2/layerdb/tmp', 'image/overlay2/layerdb/sha256', 'image/overlay2/imagedb/content/sha256', 'image/overlay2/repositories.json']) {
    const s = scratch('tptarget-');
    const input = path.join(s.root, 'in.bundle');
    fs.writeFileSync(input, await bundleBytes(layers));
    fs.mkdirSync(path.dirname(path.join(s.target, link)), { recursive: true });
    fs.symlinkSync(link.endsWith('.json') ? path.join(s.canary, 'file') : s.canary, path.join(s.target, link));
    const before = outside(s);
    const r = await cli(s, ['inject', input, '--engine-root', s.target], false);
    try {
      assertCleanOutcome(r, `${link} a symlink`);
      assert.deepEqual(mapDiff(before, outside(s)), [], `${link} a symlink: something changed outside the target\n${show(r)}`);
      if (r.code === 0) assert.ok(!fs.lstatSync(path.join(s.target, link)).isSymbolicLink() || link.endsWith('.json'), `${link}: written through?`);
    } catch (e) {
      failures.push((e as Error).message.split('\n').slice(0, 5).join('\n'));
    }
    fs.rmSync(s.root, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], failures.join('\n---\n'));
});
