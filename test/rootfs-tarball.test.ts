/**
 * A device's data root as a tarball (`tar -czf docker.tgz --xattrs --xattrs-include='*'
 * /var/lib/docker`), made here with GNU tar from the real engine root of the source fixture:
 * gzip, zstd and plain, with a `var/lib/docker/` prefix, a `./` prefix and a `docker/`
 * prefix. Every bundle extracted from a tarball must equal, attribute for attribute, the
 * bundle extracted from the directory itself — also when extract runs as an unprivileged
 * user, from a file or from standard input. A bundle whose layers come in the tarball's
 * order is injected into a bare engine root and judged by a real engine. Truncated, corrupt
 * and xattr-less tarballs fail with one line naming the source.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, requireTools, run, runOk, type RunResult } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { compareBundles, describeBundle, type BundleDescription } from './harness/bundle-digest.js';
import { chainIds } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

const T = { timeout: 600_000 };
const NOBODY = 65534;

interface RunOpts {
  asNobody?: boolean;
  input?: Buffer;
  env?: Record<string, string>;
}

function transplant(args: string[], opts: RunOpts = {}): RunResult {
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  if (opts.asNobody) {
    requireTools('setpriv');
    return run('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, cli, ...args], { timeoutMs: 300_000, input: opts.input, env: opts.env });
  }
  return run(process.execPath, [cli, ...args], { timeoutMs: 300_000, input: opts.input, env: opts.env });
}

function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(0, 3000)}`;
}

function assertOneLineError(r: RunResult, what: string, mention: string): void {
  assert.equal(r.code, 1, `${what}: exit code 1 expected\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr expected\n${show(r)}`);
  assert.match(lines[0] as string, /^error: \S/, `${what}: the line starts with "error: "\n${show(r)}`);
  assert.ok((lines[0] as string).includes(mention), `${what}: the line names ${mention}\n${show(r)}`);
}

interface Setup {
  fx: Fixtures;
  work: string;
  images: FixtureImage[];
  imageArgs: string[];
  /** The bundle extracted from the engine root directory: the reference. */
  reference: BundleDescription;
  tarballs: { gz: string; zst: string; plain: string; noXattrs: string };
}

let setup: Promise<Setup> | undefined;

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    requireTools('tar', 'zstd', 'gzip');
    const fx = await getFixtures();
    const work = tempDir('tptarball-');
    fs.chmodSync(work, 0o755); // the unprivileged runs read the tarballs from here
    const { appB, appC, appD } = fx.images;
    // appC sits on appA's layers (whiteouts, an opaque directory, an upper-layer hard link) on the base.
    const images = [appC, appB, appD];
    const imageArgs = ['--image', 'fixture/app-c:2', '--image', 'fixture/app-b:latest', '--image', appD.id];
    const refBundle = path.join(work, 'from-directory.bundle');
    const r = transplant(['extract', '--from', fx.sourceRoot, ...imageArgs, '--output', refBundle]);
    assert.equal(r.code, 0, `extract from the directory failed\n${show(r)}`);

    // Tarballs as made on a device: GNU tar, pax headers with every xattr namespace.
    const parent = path.dirname(fx.sourceRoot);
    const base = path.basename(fx.sourceRoot);
    const xattrs = ['--xattrs', '--xattrs-include=*'];
    // Rename the root inside the tarball (S: not in symlink targets, which are layer content).
    const as = (prefix: string): string => `--transform=s,^${base},${prefix},S`;
    const gz = path.join(work, 'docker.tgz');
    runOk('tar', ['-C', parent, ...xattrs, as('var/lib/docker'), '-czf', gz, base], { timeoutMs: 300_000 });
    const zst = path.join(work, 'docker.tar.zst');
    runOk('/bin/bash', ['-o', 'pipefail', '-c', `tar -C "$1" --xattrs --xattrs-include='*' -cf - . | zstd -q -o "$2"`, 'tar', fx.sourceRoot, zst], { timeoutMs: 300_000 });
    const plain = path.join(work, 'resin-data-docker.tar');
    runOk('tar', ['-C', parent, ...xattrs, as('docker'), '-cf', plain, base], { timeoutMs: 300_000 });
    const noXattrs = path.join(work, 'no-xattrs.tgz');
    runOk('tar', ['-C', parent, as('var/lib/docker'), '-czf', noXattrs, base], { timeoutMs: 300_000 });
    for (const f of [gz, zst, plain, noXattrs]) fs.chmodSync(f, 0o644);

    return { fx, work, images, imageArgs, reference: await describeBundle(refBundle, { bytes: true }), tarballs: { gz, zst, plain, noXattrs } };
  })();
  return setup;
}

async function assertSameAsDirectory(s: Setup, bundle: string, what: string): Promise<BundleDescription> {
  const got = await describeBundle(bundle, { bytes: true });
  assert.ok(got.entries.size > 300, `${what}: the bundle holds only ${got.entries.size} layer entries`);
  const diffs = compareBundles(s.reference, got, ['directory', what]);
  assert.deepEqual(diffs.slice(0, 30), [], `${what}: the bundle differs from the one extracted from the directory`);
  return got;
}

function extractTo(s: Setup, from: string, name: string, opts: RunOpts = {}): string {
  const outDir = path.join(s.work, `out-${name}`);
  fs.mkdirSync(outDir, { recursive: true });
  if (opts.asNobody) fs.chownSync(outDir, NOBODY, NOBODY);
  const bundle = path.join(outDir, `${name}.bundle`);
  const r = transplant(['extract', '--from', from, ...s.imageArgs, '--output', bundle], opts);
  assert.equal(r.code, 0, `extract --from ${from} (${name}) failed\n${show(r)}`);
  return bundle;
}

test('tarball: gzip with var/lib/docker/, zstd with ./, plain with docker/, one holding a nested data root give the bundle the directory gives', T, async () => {
  const s = await getSetup();
  const seen: string[][] = [];
  for (const [name, file] of [
    ['gzip', s.tarballs.gz],
    ['zstd', s.tarballs.zst],
    ['plain', s.tarballs.plain],
  ] as const) {
    const got = await assertSameAsDirectory(s, extractTo(s, file, name), `${name} tarball`);
    seen.push(got.contentOrder);
  }
  // A data root that holds another one (docker-in-docker: a volume with its own image/overlay2/).
  const nested = path.join(s.work, 'nested.tar');
  fs.copyFileSync(s.tarballs.plain, nested);
  const parent = path.dirname(s.fx.sourceRoot);
  const base = path.basename(s.fx.sourceRoot);
  runOk('tar', ['-C', parent, '--xattrs', '--xattrs-include=*', `--transform=s,^${base},docker/volumes/dind/_data,S`, '-rf', nested, base], { timeoutMs: 300_000 });
  await assertSameAsDirectory(s, extractTo(s, nested, 'nested'), 'tarball with a nested data root');
  // ls and --dry-run read the same metadata.
  const ls = transplant(['ls', s.tarballs.zst, '--json']);
  assert.equal(ls.code, 0, show(ls));
  const listed = (JSON.parse(ls.stdout) as { images: { id: string; references: string[] }[] }).images;
  for (const img of Object.values(s.fx.images)) {
    const e = listed.find((x) => x.id === img.id);
    assert.ok(e, `ls of the tarball lists ${img.key}`);
    assert.deepEqual([...e.references].sort(), [...img.refs].sort(), `references of ${img.key}`);
  }
});

test('tarball: an unprivileged user extracts the same bundle, from a file and from standard input', T, async () => {
  const s = await getSetup();
  // A TMPDIR of its own, to see that the stdin copy and the tar-split spool are removed.
  const tmp = path.join(s.work, 'nobody-tmp');
  fs.mkdirSync(tmp);
  fs.chownSync(tmp, NOBODY, NOBODY);
  const env = { TMPDIR: tmp };
  await assertSameAsDirectory(s, extractTo(s, s.tarballs.gz, 'nobody-file', { asNobody: true, env }), 'gzip tarball read by uid 65534');
  const input = fs.readFileSync(s.tarballs.zst);
  await assertSameAsDirectory(s, extractTo(s, '-', 'nobody-stdin', { asNobody: true, input, env }), 'zstd tarball on standard input of uid 65534');
  assert.deepEqual(fs.readdirSync(tmp), [], `temp files left in ${tmp}`);
});

test('tarball: a bundle in the tarball\'s layer order injects into a bare engine root that a real engine runs', T, async () => {
  const s = await getSetup();
  const bundle = extractTo(s, s.tarballs.gz, 'for-inject');
  const got = await describeBundle(bundle);
  const baseFirst = [...new Set(s.images.flatMap((i) => chainIds(i.diffIds)))].map((c) => c.slice(7));
  assert.deepEqual([...got.contentOrder].sort(), [...baseFirst].sort(), 'the bundle holds each needed layer once');
  const target = path.join(s.work, 'inject-target', 'docker');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['inject', bundle, '--engine-root', target]);
  assert.equal(r.code, 0, `inject failed\n${show(r)}`);
  // Straight from the tarball too (no bundle in between): preload streams it in its own order.
  const target2 = path.join(s.work, 'preload-target', 'docker');
  copyTree(s.fx.bareEngineRoot, target2);
  const p = transplant(['preload', '--from', s.tarballs.plain, ...s.imageArgs, '--engine-root', target2]);
  assert.equal(p.code, 0, `preload --from a tarball failed\n${show(p)}`);
  const { appA, base, unselected } = s.fx.images;
  for (const t of [target, target2]) {
    const problems = await verifyInjectedEngineRoot({
      engineRoot: t,
      sourceRoot: s.fx.sourceRoot,
      injected: s.images,
      absentRefs: [...appA.refs, ...base.refs, ...unselected.refs],
      scratchDir: s.work,
    });
    assert.deepEqual(problems, [], `${t} after injecting images read from a tarball`);
  }
  process.stderr.write(`# content order of the tarball bundle: ${got.contentOrder.map((c) => c.slice(0, 8)).join(' ')}; base first: ${baseFirst.map((c) => c.slice(0, 8)).join(' ')}\n`);
});

test('tarball: truncated, corrupt and xattr-less tarballs fail with one line naming the source', T, async () => {
  const s = await getSetup();
  const cut = (src: string, name: string, at: (size: number) => number): string => {
    const data = fs.readFileSync(src);
    const out = path.join(s.work, name);
    fs.writeFileSync(out, data.subarray(0, at(data.length)));
    return out;
  };
  const cases: [string, string][] = [
    ['gzip cut in half', cut(s.tarballs.gz, 'half.tgz', (n) => Math.floor(n / 2))],
    ['gzip without its last bytes', cut(s.tarballs.gz, 'short.tgz', (n) => n - 100)],
    ['zstd cut in half', cut(s.tarballs.zst, 'half.tar.zst', (n) => Math.floor(n / 2))],
    ['plain tar cut inside a file', cut(s.tarballs.plain, 'half.tar', (n) => Math.floor(n / 2) + 100)],
    ['plain tar cut at a block boundary', cut(s.tarballs.plain, 'blocks.tar', (n) => Math.floor(n / 2 / 512) * 512)],
  ];
  const garbled = path.join(s.work, 'garbled.tgz');
  const data = fs.readFileSync(s.tarballs.gz);
  for (let i = Math.floor(data.length / 3); i < Math.floor(data.length / 3) + 64; i++) data[i] = (data[i] as number) ^ 0x5a;
  fs.writeFileSync(garbled, data);
  cases.push(['gzip with garbled bytes', garbled]);
  const garbledTar = path.join(s.work, 'garbled.tar');
  const plain = fs.readFileSync(s.tarballs.plain);
  // The first header's checksum no longer matches.
  plain[10] = (plain[10] as number) ^ 0x01;
  fs.writeFileSync(garbledTar, plain.subarray(0, 4096 * 64));
  cases.push(['a tar whose header is damaged', garbledTar]);
  for (const [what, file] of cases) {
    const out = path.join(s.work, `${path.basename(file)}.bundle`);
    const r = transplant(['extract', '--from', file, ...s.imageArgs, '--output', out]);
    assertOneLineError(r, what, file);
    assert.ok(!fs.existsSync(out), `${what}: no bundle is left behind`);
  }
  const r = transplant(['extract', '--from', s.tarballs.noXattrs, ...s.imageArgs, '--output', path.join(s.work, 'nox.bundle')]);
  assertOneLineError(r, 'a tarball made without --xattrs', s.tarballs.noXattrs);
  assert.match(r.stderr, /--xattrs/, 'the message says how to make the tarball');
});
