/**
 * `docker save` archives and OCI layouts as a source: injected with `transplant inject` into
 * a fresh engine root, judged against what a real `docker load` of the same archive makes
 * (every layer file, attribute by attribute), by a real engine running the images and
 * `docker save` reproducing every DiffID, and by `transplant verify`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { repoRoot, run, runOk, requireTools, type RunResult } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { chainIds, compareLayerFiles, layerDiffDir, readRepositories, snapshotTree } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

function transplant(args: string[]): RunResult {
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  return run(process.execPath, [cli, ...args], { timeoutMs: 300_000 });
}

function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 2000)}\nstderr: ${r.stderr.slice(0, 2000)}`;
}

const KEYS = ['base', 'appA', 'appB', 'appC', 'appD'] as const;

interface Setup {
  fx: Fixtures;
  work: string;
  /** `docker save` of every image above (legacy layout, as dockerd 20.10 writes it). */
  archive: string;
  /** An engine root that `docker load`ed the archive: the reference. */
  loaded: string;
  /** The images with only the references an archive carries (tags, no digest references). */
  images: FixtureImage[];
}

let setup: Promise<Setup> | undefined;

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    const fx = await getFixtures();
    const work = tempDir('tpda-');
    const src = path.join(work, 'src');
    copyTree(fx.sourceRoot, src);
    const images = KEYS.map((k) => ({ ...fx.images[k], refs: fx.images[k].refs.filter((r) => !r.includes('@')) }));
    const archive = path.join(work, 'images.tar');
    let d = await Dockerd.start({ dataRoot: src });
    try {
      d.docker(['save', '-o', archive, ...images.flatMap((i) => i.refs)], { timeoutMs: 300_000 });
    } finally {
      await d.stop();
    }
    d.cleanup();
    const loaded = path.join(work, 'loaded');
    copyTree(fx.bareEngineRoot, loaded);
    d = await Dockerd.start({ dataRoot: loaded });
    try {
      d.docker(['load', '-q', '-i', archive], { timeoutMs: 300_000 });
    } finally {
      await d.stop();
    }
    d.cleanup();
    return { fx, work, archive, loaded, images };
  })();
  return setup;
}

/**
 * Layer files of `root` against the reference `docker load`: every attribute of every file,
 * except what `docker load` makes at the moment it runs (whiteout devices' and diff/'s own times).
 */
function layerDifferences(reference: string, root: string, images: FixtureImage[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const img of images) {
    for (const chain of chainIds(img.diffIds)) {
      if (seen.has(chain)) continue;
      seen.add(chain);
      const refDiff = layerDiffDir(reference, chain);
      const whiteouts = new Set([...snapshotTree(refDiff)].filter(([, r]) => r.type === 'c' && r.rdev === '0:0').map(([p]) => p));
      const diffs = compareLayerFiles(refDiff, layerDiffDir(root, chain), { ignoreRootAttributes: true }).filter((line) => {
        const m = /^(.*): mtime /.exec(line);
        return !(m && whiteouts.has(m[1] as string));
      });
      out.push(...diffs.map((l) => `layer ${chain} (${img.key}): ${l}`));
      // layerdb size: what the engine's directory.Size counted after applying the tar.
      const sizeOf = (r: string): string => fs.readFileSync(path.join(r, 'image', 'overlay2', 'layerdb', 'sha256', chain.slice(7), 'size'), 'utf8');
      if (sizeOf(reference) !== sizeOf(root)) out.push(`layer ${chain} (${img.key}): size ${sizeOf(root)} != ${sizeOf(reference)} (docker load)`);
    }
  }
  return out;
}

test('docker save archive: inject equals docker load, the engine runs it, docker save reproduces the DiffIDs, verify passes', { timeout: 900_000 }, async () => {
  const s = await getSetup();
  // The fixtures really hold what this test is about.
  const aChains = chainIds(s.fx.images.appA.diffIds);
  const a1 = snapshotTree(layerDiffDir(s.loaded, aChains[1] as string));
  assert.equal(a1.get('data/delete-me')?.type, 'c', 'docker load made a whiteout');
  assert.match(a1.get('data/replace-me')?.xattrs ?? '', /trusted\.overlay\.opaque=0x79/, 'docker load made an opaque directory');

  // dockerd 20.10 saves a layer shared at another position as a symlink to its first layer.tar.
  assert.match(runOk('tar', ['-tvf', s.archive]).stdout, /^l.* -> \.\.\/[0-9a-f]{64}\/layer\.tar$/m, 'the archive has a symlinked layer.tar');

  const target = path.join(s.work, 'target');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['inject', s.archive, '--engine-root', target]);
  assert.equal(r.code, 0, show(r));

  assert.deepEqual(layerDifferences(s.loaded, target, s.images), []);
  // A whiteout keeps the tar entry's owner (docker load chowns it to the header's uid/gid).
  const ours = snapshotTree(layerDiffDir(target, aChains[1] as string));
  assert.equal(ours.get('data/delete-me')?.mode, '0000');

  const v = transplant(['verify', target]);
  assert.equal(v.code, 0, show(v));
  assert.match(v.stdout, /OK/);

  // Into a bundle (with the generated tar-splits), which verifies too.
  const bundle = path.join(s.work, 'app-c.bundle');
  const x = transplant(['extract', '--from', s.archive, '--image', 'fixture/app-c:2', '-o', bundle]);
  assert.equal(x.code, 0, show(x));
  const vb = transplant(['verify', bundle, '--json']);
  assert.equal(vb.code, 0, show(vb));
  assert.equal((JSON.parse(vb.stdout) as { layerCount: number }).layerCount, s.fx.images.appC.diffIds.length);

  const problems = (
    await verifyInjectedEngineRoot({ engineRoot: target, sourceRoot: s.loaded, injected: s.images, scratchDir: s.work })
  )
    // docker load gives diff/ itself and whiteout devices the time it runs; the rest must be equal.
    .filter((p) => !/\): (\.|data\/delete-me|data\/delete-dir|data\/hl-b|data\/replace-me\/new-file): mtime /.test(p));
  assert.deepEqual(problems.length === 1 && /^\(engine log kept/.test(problems[0] as string) ? [] : problems, []);
});

test('OCI layout (gzip and zstd layers, containerd name annotations) as a tar: listed, injected equal to docker load, verified', { timeout: 900_000 }, async () => {
  requireTools('tar', 'gzip', 'zstd');
  const s = await getSetup();
  const x = path.join(s.work, 'x');
  fs.mkdirSync(x);
  runOk('tar', ['-xf', s.archive, '-C', x]);
  const manifest = JSON.parse(fs.readFileSync(path.join(x, 'manifest.json'), 'utf8')) as { Config: string; RepoTags: string[]; Layers: string[] }[];
  const oci = path.join(s.work, 'oci');
  fs.mkdirSync(path.join(oci, 'blobs', 'sha256'), { recursive: true });
  const put = (data: Buffer): { digest: string; size: number } => {
    const hex = createHash('sha256').update(data).digest('hex');
    fs.writeFileSync(path.join(oci, 'blobs', 'sha256', hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const descriptors = [];
  const docker25: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  let n = 0;
  for (const m of manifest) {
    const config = put(fs.readFileSync(path.join(x, m.Config)));
    const layers = m.Layers.map((l) => {
      const file = path.join(x, l);
      // Alternate compressions: gzip, zstd, none.
      const kind = n++ % 3;
      // (layer.tar may be a symlink to an identical layer of another image: read through it.)
      const tar = fs.readFileSync(file);
      const data = kind === 0 ? runOk('gzip', ['-c', '-n'], { input: tar }).stdoutBytes : kind === 1 ? runOk('zstd', ['-q', '-c'], { input: tar }).stdoutBytes : tar;
      const mediaType = `application/vnd.oci.image.layer.v1.tar${kind === 0 ? '+gzip' : kind === 1 ? '+zstd' : ''}`;
      return { mediaType, ...put(data) };
    });
    docker25.push({ Config: `blobs/sha256/${config.digest.slice(7)}`, RepoTags: m.RepoTags, Layers: layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`) });
    const man = put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers })));
    for (const tag of m.RepoTags) {
      descriptors.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...man, annotations: { 'io.containerd.image.name': `docker.io/${tag.includes('/') ? '' : 'library/'}${tag}`, 'org.opencontainers.image.ref.name': tag.split(':').pop() } });
    }
  }
  fs.writeFileSync(path.join(oci, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: descriptors }));
  fs.writeFileSync(path.join(oci, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const ociTar = path.join(s.work, 'oci.tar');
  runOk('tar', ['-C', oci, '-cf', ociTar, 'oci-layout', 'index.json', 'blobs']);

  const ls = transplant(['ls', ociTar, '--json']);
  assert.equal(ls.code, 0, show(ls));
  const listed = (JSON.parse(ls.stdout) as { images: { id: string; references: string[] }[] }).images;
  for (const img of s.images) {
    const l = listed.find((i) => i.id === img.id);
    assert.ok(l, `${img.key} is listed`);
    assert.deepEqual([...l.references].sort(), [...img.refs].sort(), `${img.key} references`);
  }

  const target = path.join(s.work, 'target-oci');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['inject', ociTar, '--engine-root', target]);
  assert.equal(r.code, 0, show(r));
  assert.deepEqual(layerDifferences(s.loaded, target, s.images), []);
  const repos = readRepositories(target);
  for (const img of s.images) for (const ref of img.refs) assert.equal(repos.get(ref), img.id, ref);
  const v = transplant(['verify', target]);
  assert.equal(v.code, 0, show(v));

  // What Docker 25+ `docker save` writes: the OCI layout plus a manifest.json pointing into it (RepoTags win).
  fs.writeFileSync(path.join(oci, 'manifest.json'), JSON.stringify(docker25));
  const d25 = path.join(s.work, 'docker25.tar');
  runOk('tar', ['-C', oci, '-cf', d25, 'blobs', 'index.json', 'manifest.json', 'oci-layout']);
  const ls25 = transplant(['ls', d25, '--json']);
  assert.equal(ls25.code, 0, show(ls25));
  for (const l of (JSON.parse(ls25.stdout) as { images: { id: string; references: string[] }[] }).images) {
    const img = s.images.find((i) => i.id === l.id);
    assert.ok(img, `unexpected image ${l.id}`);
    assert.deepEqual([...l.references].sort(), [...img.refs].sort(), `${img.key} references (Docker 25 archive)`);
  }
  fs.rmSync(path.join(oci, 'manifest.json'));

  // The layout as a directory, and a gzip-compressed docker save archive, are sources too.
  const lsDir = transplant(['ls', oci, '--json']);
  assert.equal(lsDir.code, 0, show(lsDir));
  assert.equal((JSON.parse(lsDir.stdout) as { images: unknown[] }).images.length, s.images.length);
  // Standard input is spooled to a temp file (an archive is read more than once) and said so.
  const stdin = run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), 'ls', '-', '--json'], { input: fs.readFileSync(s.archive), timeoutMs: 300_000 });
  assert.equal(stdin.code, 0, show(stdin));
  assert.equal((JSON.parse(stdin.stdout) as { images: unknown[] }).images.length, s.images.length);
  assert.match(stdin.stderr, /^warning: reading an image archive from standard input: spooling it to /, show(stdin));
  const gz = path.join(s.work, 'images.tar.gz');
  fs.writeFileSync(gz, runOk('gzip', ['-c', '-1', s.archive]).stdoutBytes);
  const lsGz = transplant(['ls', gz, '--json']);
  assert.equal(lsGz.code, 0, show(lsGz));
  assert.equal((JSON.parse(lsGz.stdout) as { images: unknown[] }).images.length, s.images.length);
});

test('truncated and corrupt archives fail with one clear line naming the source, and leave the target as it was', { timeout: 600_000 }, async () => {
  const s = await getSetup();
  const data = fs.readFileSync(s.archive);

  const truncated = path.join(s.work, 'truncated.tar');
  fs.writeFileSync(truncated, data.subarray(0, Math.floor(data.length / 2) + 100));
  for (const args of [['ls', truncated], ['inject', truncated, '--engine-root', path.join(s.work, 'never')]]) {
    const r = transplant(args);
    assert.equal(r.code, 1, show(r));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, show(r));
    assert.match(lines[0] as string, /^error: .*truncated\.tar.*(truncated|corrupt)/, show(r));
  }

  // One byte of one file inside a layer tar.
  const corrupt = path.join(s.work, 'corrupt.tar');
  const at = data.indexOf(Buffer.from('replaced\n'));
  assert.ok(at > 0, 'the archive holds the content of data/replace-me/new-file');
  const bad = Buffer.from(data);
  bad[at] = 'R'.charCodeAt(0);
  fs.writeFileSync(corrupt, bad);
  const target = path.join(s.work, 'target-corrupt');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['inject', corrupt, '--engine-root', target]);
  assert.equal(r.code, 1, show(r));
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, show(r));
  assert.match(lines[0] as string, /^error: .*corrupt\.tar.*DiffID/, show(r));
  assert.equal(readRepositories(target).size, 0, 'nothing was injected');

});

test('hand-made archive: entries before their directories, missing parents, a late opaque marker: inject equals docker load', { timeout: 600_000 }, async () => {
  requireTools('python3');
  const s = await getSetup();
  const dir = path.join(s.work, 'handmade');
  fs.mkdirSync(dir);
  // Python's tarfile writes the entries in exactly this order (pax format, numeric owners).
  const script = `
import tarfile, io, sys
def add(t, name, kind, mode, uid=0, gid=0, mtime=1600000000, data=b''):
    i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.uid = uid; i.gid = gid; i.mtime = mtime
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as t:
    add(t, 'a/b/file', tarfile.REGTYPE, 0o640, 1000, 1000, data=b'deep file\\n')
    add(t, 'a/', tarfile.DIRTYPE, 0o700, 1234, 5678, 1500000000)
    add(t, 'a/b/', tarfile.DIRTYPE, 0o750, 42, 43, 1400000000)
    add(t, 'c/d/e', tarfile.REGTYPE, 0o600, data=b'e\\n')
    add(t, 'c/.wh..wh..opq', tarfile.REGTYPE, 0o600)
    add(t, '.wh.zap', tarfile.REGTYPE, 0o600, 77, 88)
`;
  const layer = path.join(dir, 'layer.tar');
  runOk('python3', ['-c', script, layer]);
  const diffId = 'sha256:' + createHash('sha256').update(fs.readFileSync(layer)).digest('hex');
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: [diffId] } }));
  const configHex = createHash('sha256').update(config).digest('hex');
  fs.mkdirSync(path.join(dir, 'l1'));
  fs.renameSync(layer, path.join(dir, 'l1', 'layer.tar'));
  fs.writeFileSync(path.join(dir, `${configHex}.json`), config);
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify([{ Config: `${configHex}.json`, RepoTags: ['handmade/test:1'], Layers: ['l1/layer.tar'] }]));
  const archive = path.join(s.work, 'handmade.tar');
  runOk('tar', ['-C', dir, '-cf', archive, 'manifest.json', `${configHex}.json`, 'l1']);

  const loaded = path.join(s.work, 'handmade-loaded');
  copyTree(s.fx.bareEngineRoot, loaded);
  const d = await Dockerd.start({ dataRoot: loaded });
  try {
    d.docker(['load', '-q', '-i', archive]);
  } finally {
    await d.stop();
  }
  d.cleanup();
  const target = path.join(s.work, 'handmade-target');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['inject', archive, '--engine-root', target]);
  assert.equal(r.code, 0, show(r));
  const [chain] = chainIds([diffId]);
  const ref = snapshotTree(layerDiffDir(loaded, chain as string));
  assert.equal(ref.get('a')?.mode, '0700', 'docker load applied the late directory entry');
  assert.match(ref.get('c')?.xattrs ?? '', /trusted\.overlay\.opaque=0x79/);
  // The engine makes missing parents (c, c/d) and whiteouts at the moment it runs: their times differ.
  const diffs = compareLayerFiles(layerDiffDir(loaded, chain as string), layerDiffDir(target, chain as string), { ignoreRootAttributes: true }).filter(
    (l) => !/^(c|c\/d|zap): mtime /.test(l),
  );
  assert.deepEqual(diffs, []);
  const v = transplant(['verify', target]);
  assert.equal(v.code, 0, show(v));
});
