/**
 * Issue 11, pulling straight from a registry into a target. Real parts only: Debian's
 * docker-registry on 127.0.0.1 (anonymous over HTTP; htpasswd Basic over TLS with a CA made
 * here; token auth with JWTs from a token server in the harness), all three serving one
 * storage that a real dockerd pushed the fixture images to (plus a hand-built multi-platform
 * OCI index and a zstd copy made by skopeo). Judged against a real `docker pull` of the same
 * references into a fresh data root: image IDs, layer chains, tar-split bytes,
 * repositories.json and distribution/ metadata equal; every file of every layer equal; the
 * images run and `docker save` reproduces their DiffIDs. Failures (wrong password, expired
 * token, tampered manifest and blob, 404, missing platform) are one line naming the image,
 * and leave the target as it was; a connection cut mid-blob resumes.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { isDeepStrictEqual } from 'node:util';
import { assertOneLineError, show, transplant } from './harness/cli.js';
import { Dockerd } from './harness/dockerd.js';
import { repoRoot, requireTools, run, runOk, type RunResult } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { chainIds, compareLayerFiles, diffSnapshots, layerCacheIds, layerDiffDir, readRepositories, snapshotTree, type Snapshot } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';
import { buildBalenaImage, requireImageTools } from './harness/balena-image.js';
import { parseRegistryUrl, pulledReferences, refOnHost, registryRef } from '../src/registry/reference.js';
import { parseChallenge } from '../src/registry/client.js';
import { choosePlatform, parsePlatform, platformsForBalenaArch, type Descriptor } from '../src/registry/manifest.js';
import { addV2Metadata } from '../src/engine/distribution.js';
import { assertE2fsckClean, tableProblems, withMountedData } from './harness/disk-judge.js';
import {
  fetchManifest,
  makeHtpasswd,
  makeTls,
  putManifest,
  pushImage,
  startProxy,
  startRegistry,
  startTokenServer,
  type Registry,
} from './harness/registry.js';

const T = { timeout: 900_000 };

interface Pushed {
  /** The name on the registry (no host), e.g. fixture/app-a:1.0. */
  name: string;
  image: FixtureImage;
}

interface Setup {
  fx: Fixtures;
  work: string;
  storage: string;
  anon: Registry;
  pushed: Pushed[];
  /** multi/app:latest: an OCI index, linux/amd64 → appA, linux/arm/v7 → appB. */
  indexDigest: string;
  /** zstd/base:latest: the base image with a zstd layer (skopeo). */
  zstdName: string;
  /** A fresh engine root where a real dockerd pulled every reference from `anon`. */
  pulled: string;
  pulledRefs: string[];
}

let setup: Promise<Setup> | undefined;

// The shared registry lives for the whole file; stopped at the end so the file's process can exit.
after(async () => {
  const s = await setup?.catch(() => undefined);
  await s?.anon.stop();
});

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    requireTools('docker-registry', 'skopeo', 'openssl', 'htpasswd');
    const fx = await getFixtures();
    const work = tempDir('tpreg-');
    const storage = path.join(work, 'storage');
    const anon = await startRegistry({ storage, dir: path.join(work, 'anon') });
    const src = path.join(work, 'src');
    copyTree(fx.sourceRoot, src);
    const names: [keyof Fixtures['images'], string][] = [
      ['base', 'fixture/base:latest'],
      ['appA', 'fixture/app-a:1.0'],
      ['appC', 'fixture/app-c:2'],
      ['appD', 'fixture/app-d:3.1'],
      ['appA', 'multi/app:amd64'],
      ['appB', 'multi/app:armv7'],
    ];
    let d = await Dockerd.start({ dataRoot: src });
    try {
      for (const [key, name] of names) {
        // Loopback registries are insecure-allowed by dockerd: a plain `docker push` works.
        d.docker(['tag', fx.images[key].id, `${anon.host}/${name}`]);
        d.docker(['push', `${anon.host}/${name}`], { timeoutMs: 300_000 });
      }
    } finally {
      await d.stop();
    }
    d.cleanup();
    const pushed = names.slice(0, 4).map(([key, name]) => ({ name, image: fx.images[key] }));

    // A multi-platform OCI index over the two pushed manifests, PUT by hand.
    const amd = await fetchManifest(anon.host, 'multi/app', 'amd64');
    const arm = await fetchManifest(anon.host, 'multi/app', 'armv7');
    const mt = 'application/vnd.docker.distribution.manifest.v2+json';
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: mt, digest: arm.digest, size: arm.body.length, platform: { architecture: 'arm', os: 'linux', variant: 'v7' } },
          { mediaType: mt, digest: amd.digest, size: amd.body.length, platform: { architecture: 'amd64', os: 'linux' } },
        ],
      }),
    );
    await putManifest(anon.host, 'multi/app', 'latest', index, 'application/vnd.oci.image.index.v1+json');
    const indexDigest = (await fetchManifest(anon.host, 'multi/app', 'latest')).digest;

    // A zstd layer: skopeo recompresses the base image into an OCI manifest.
    const zstdName = 'zstd/base:latest';
    runOk('skopeo', [
      'copy', '--quiet', '--format', 'oci', '--dest-compress', '--dest-compress-format', 'zstd', '--src-tls-verify=false', '--dest-tls-verify=false',
      `docker://${anon.host}/fixture/base:latest`, `docker://${anon.host}/${zstdName}`,
    ], { timeoutMs: 300_000 });
    const zm = JSON.parse((await fetchManifest(anon.host, 'zstd/base', 'latest')).body.toString('utf8')) as { layers: { mediaType: string }[] };
    assert.ok(zm.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+zstd'), `skopeo made zstd layers: ${JSON.stringify(zm.layers)}`);

    // The reference: a real dockerd pulls the same references into a fresh data root.
    const pulled = path.join(work, 'pulled');
    copyTree(fx.bareEngineRoot, pulled);
    const pulledRefs = [...pushed.map((p) => p.name), 'multi/app:latest'].map((n) => `${anon.host}/${n}`);
    d = await Dockerd.start({ dataRoot: pulled });
    try {
      for (const ref of pulledRefs) d.docker(['pull', '-q', ref], { timeoutMs: 300_000 });
    } finally {
      await d.stop();
    }
    d.cleanup();
    return { fx, work, storage, anon, pushed, indexDigest, zstdName, pulled, pulledRefs };
  })();
  return setup;
}

/** Every file under a directory, relative path → content (for the small metadata trees). */
function files(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p);
      else out.set(p, fs.readFileSync(path.join(dir, p)));
    }
  };
  if (fs.existsSync(dir)) walk('');
  return out;
}

/**
 * What must be equal between a store docker pull made and ours: image IDs (imagedb content
 * bytes), layerdb entries (diff, parent, size, tar-split content), repositories.json and
 * distribution/, and every layer file (except what the engine stamps with the time it runs:
 * diff/ itself and whiteout devices).
 */
function storeDifferences(reference: string, root: string, chains: readonly string[]): string[] {
  const out: string[] = [];
  const img = (r: string): string => path.join(r, 'image', 'overlay2');
  const configs = (r: string): string[] => [...files(path.join(img(r), 'imagedb', 'content')).keys()].sort();
  if (JSON.stringify(configs(reference)) !== JSON.stringify(configs(root))) out.push(`image IDs: ${configs(root).join(',')} != ${configs(reference).join(',')}`);
  const repos = (r: string): unknown => JSON.parse(fs.readFileSync(path.join(img(r), 'repositories.json'), 'utf8'));
  // Same keys and values (the engine's Go map marshalling sorts keys; the order means nothing to it).
  if (!isDeepStrictEqual(repos(root), repos(reference))) out.push(`repositories.json: ${JSON.stringify(repos(root))} != ${JSON.stringify(repos(reference))}`);
  const dist = (r: string): Map<string, Buffer> => files(path.join(img(r), 'distribution'));
  const a = dist(reference);
  const b = dist(root);
  if (a.size === 0) out.push('docker pull wrote no distribution metadata (judge broken)');
  for (const [p, data] of a) if (!b.get(p)?.equals(data)) out.push(`distribution/${p}: ${b.get(p)?.toString('utf8') ?? 'missing'} != ${data.toString('utf8')}`);
  for (const p of b.keys()) if (!a.has(p)) out.push(`distribution/${p}: docker pull has no such file`);
  for (const chain of chains) {
    const dir = (r: string): string => path.join(img(r), 'layerdb', 'sha256', chain.slice(7));
    for (const f of ['diff', 'parent', 'size']) {
      const x = fs.existsSync(path.join(dir(reference), f)) ? fs.readFileSync(path.join(dir(reference), f), 'utf8') : undefined;
      const y = fs.existsSync(path.join(dir(root), f)) ? fs.readFileSync(path.join(dir(root), f), 'utf8') : undefined;
      if (x !== y) out.push(`layer ${chain}: ${f} ${y} != ${x}`);
    }
    const ts = (r: string): Buffer => gunzipSync(fs.readFileSync(path.join(dir(r), 'tar-split.json.gz')));
    if (!ts(reference).equals(ts(root))) out.push(`layer ${chain}: tar-split differs from docker pull's`);
    const whiteouts = new Set([...snapshotTree(layerDiffDir(reference, chain))].filter(([, r]) => r.type === 'c' && r.rdev === '0:0').map(([p]) => p));
    const diffs = compareLayerFiles(layerDiffDir(reference, chain), layerDiffDir(root, chain), { ignoreRootAttributes: true }).filter((line) => {
      const m = /^(.*): mtime /.exec(line);
      return !(m && whiteouts.has(m[1] as string));
    });
    out.push(...diffs.map((l) => `layer ${chain}: ${l}`));
  }
  return out;
}

function imagesOf(s: Setup, host: string): FixtureImage[] {
  const refs = (name: string, digest: string): string[] => [`${host}/${name}`, `${host}/${name.replace(/:[^:/]+$/, '')}@${digest}`];
  const repos = readRepositories(s.pulled);
  const out: FixtureImage[] = s.pushed.map((p) => {
    const digestKey = [...repos.keys()].find((k) => k.startsWith(`${s.anon.host}/${p.name.replace(/:[^:/]+$/, '')}@`)) as string;
    return { ...p.image, refs: refs(p.name, digestKey.split('@')[1] as string) };
  });
  out.push({ ...s.fx.images.appA, key: 'multi', refs: refs('multi/app:latest', s.indexDigest) });
  return out;
}

/** Nothing changed in the target but directory times (a failed run removes what it created). */
function assertUnchanged(target: string, before: Snapshot, what: string): void {
  assert.deepEqual(diffSnapshots(before, snapshotTree(target), { directoryTimes: false }), [], `${what}: the target changed`);
}

const allChains = (images: FixtureImage[]): string[] => [...new Set(images.flatMap((i) => chainIds(i.diffIds)))];

test('registry (anonymous HTTP) → engine root equals docker pull: IDs, chains, tar-split, repositories.json, distribution/, files; runs; docker save', T, async () => {
  const s = await getSetup();
  const target = path.join(s.work, 'target-anon');
  copyTree(s.fx.bareEngineRoot, target);
  const args = ['preload', '--from', `docker://${s.anon.host}`, ...[...s.pushed.map((p) => p.name), 'multi/app:latest'].flatMap((n) => ['--image', n]), '--platform', 'linux/amd64', '--engine-root', target];
  const r = transplant(args);
  assert.equal(r.code, 0, show(r));
  const images = imagesOf(s, s.anon.host);
  // The index's digest is what docker pull records for multi/app (not the platform manifest's).
  assert.equal(readRepositories(s.pulled).get(`${s.anon.host}/multi/app@${s.indexDigest}`), s.fx.images.appA.id, 'judge: docker pull keys the index digest');
  assert.deepEqual(storeDifferences(s.pulled, target, allChains(images)), []);
  const problems = (await verifyInjectedEngineRoot({ engineRoot: target, sourceRoot: s.pulled, injected: images, scratchDir: s.work })).filter(
    (p) => !/\): (\.|data\/delete-me|data\/delete-dir|data\/hl-b|data\/replace-me\/new-file): mtime /.test(p),
  );
  assert.deepEqual(problems.length === 1 && /^\(engine log kept/.test(problems[0] as string) ? [] : problems, []);
});

test('registry: a zstd layer, --platform from an index, ls docker://, and a second pull reuses every layer (nothing fetched)', T, async () => {
  const s = await getSetup();
  const target = path.join(s.work, 'target-zstd');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['preload', '--from', `docker://${s.anon.host}/${s.zstdName}`, '--engine-root', target]);
  assert.equal(r.code, 0, show(r));
  const base = s.fx.images.base;
  // skopeo rewrote the config for the OCI manifest (another image ID); the layers are the same.
  const zstdManifest = JSON.parse((await fetchManifest(s.anon.host, 'zstd/base', 'latest')).body.toString('utf8')) as { config: { digest: string } };
  const zstdId = zstdManifest.config.digest;
  assert.equal(readRepositories(target).get(`${s.anon.host}/${s.zstdName}`), zstdId);
  const zstdConfig = JSON.parse(fs.readFileSync(path.join(target, 'image/overlay2/imagedb/content/sha256', zstdId.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } };
  assert.deepEqual(zstdConfig.rootfs.diff_ids, base.diffIds, 'the zstd layers unpack to the DiffIDs of the gzip original');
  const chains = chainIds(base.diffIds);
  const v = transplant(['verify', target]);
  assert.equal(v.code, 0, show(v));
  // Against the gzip pull: the same layers, files and sizes. (The tar-split's last segment
  // follows the decompressor's reads, docker's zstd decoder's are not deterministic; the
  // tar-split still rebuilds the layer: verify above.)
  assert.deepEqual(storeDifferences(s.pulled, target, chains).filter((l) => !/repositories|distribution|image IDs|tar-split differs/.test(l)), []);
  // v2metadata names the zstd blob for that repository.
  const meta = JSON.parse(fs.readFileSync(path.join(target, 'image/overlay2/distribution/v2metadata-by-diffid/sha256', base.diffIds[0]!.slice(7)), 'utf8')) as { SourceRepository: string }[];
  assert.deepEqual(meta.map((m) => m.SourceRepository), [`${s.anon.host}/zstd/base`]);

  // arm/v7 from the index: appB.
  const armTarget = path.join(s.work, 'target-arm');
  copyTree(s.fx.bareEngineRoot, armTarget);
  const a = transplant(['preload', '--from', `docker://${s.anon.host}/multi/app:latest`, '--platform', 'linux/arm/v7', '--engine-root', armTarget]);
  assert.equal(a.code, 0, show(a));
  assert.equal(readRepositories(armTarget).get(`${s.anon.host}/multi/app:latest`), s.fx.images.appB.id);

  const ls = transplant(['ls', `docker://${s.anon.host}/fixture/app-c:2`, '--json']);
  assert.equal(ls.code, 0, show(ls));
  assert.match(ls.stdout, new RegExp(s.fx.images.appC.id));

  // app-c on the same target: its two base layers are the target's already (same ChainIDs),
  // so they must not be fetched — served here through a proxy that corrupts the first of them.
  const appCManifest = JSON.parse((await fetchManifest(s.anon.host, 'fixture/app-c', '2')).body.toString('utf8')) as { layers: { digest: string }[] };
  const proxy = await startProxy(s.anon.port, 'blob', appCManifest.layers[0]!.digest);
  try {
    const cacheIds = chains.map((c) => fs.readFileSync(path.join(target, 'image/overlay2/layerdb/sha256', c.slice(7), 'cache-id'), 'utf8'));
    const again = transplant(['preload', '--from', `docker://127.0.0.1:${proxy.port}/fixture/app-c:2`, '--engine-root', target]);
    assert.equal(again.code, 0, show(again));
    assert.deepEqual(chains.map((c) => fs.readFileSync(path.join(target, 'image/overlay2/layerdb/sha256', c.slice(7), 'cache-id'), 'utf8')), cacheIds, 'reused');
    assert.equal(readRepositories(target).get(`127.0.0.1:${proxy.port}/fixture/app-c:2`), s.fx.images.appC.id);
    // The base layers' v2metadata now names both repositories (the engine's Add appends).
    const meta2 = JSON.parse(fs.readFileSync(path.join(target, 'image/overlay2/distribution/v2metadata-by-diffid/sha256', base.diffIds[0]!.slice(7)), 'utf8')) as { SourceRepository: string }[];
    assert.deepEqual(meta2.map((m) => m.SourceRepository), [`${s.anon.host}/zstd/base`, `127.0.0.1:${proxy.port}/fixture/app-c`]);
  } finally {
    await proxy.stop();
  }
});

test('registry: htpasswd Basic auth over TLS with --ca, and token auth (registry auth: token); wrong password and expired token are one line, target untouched', T, async () => {
  const s = await getSetup();
  const tls = makeTls(path.join(s.work, 'tls'));
  const htpasswd = makeHtpasswd(path.join(s.work, 'htpasswd'), 'alice', 's3cret');
  const basic = await startRegistry({ storage: s.storage, dir: path.join(s.work, 'basic'), tls, htpasswd });
  const token = await startTokenServer(path.join(s.work, 'token'), { users: { bob: 'hunter2' } });
  const tokenReg = await startRegistry({ storage: s.storage, dir: path.join(s.work, 'tokenreg'), token: token.auth });
  const expired = await startTokenServer(path.join(s.work, 'token'), { users: { bob: 'hunter2' }, expired: true });
  const expiredReg = await startRegistry({ storage: s.storage, dir: path.join(s.work, 'expiredreg'), token: expired.auth });
  try {
    const appC = s.fx.images.appC;
    // Basic over TLS, the CA given with --ca, credentials from a docker config (DOCKER_CONFIG).
    const t1 = path.join(s.work, 'target-basic');
    copyTree(s.fx.bareEngineRoot, t1);
    const untouched = snapshotTree(t1);
    const wrong = transplant(['preload', '--from', `docker://${basic.host}/fixture/app-c:2`, '--ca', tls.caCert, '--registry-auth', 'alice:wrong', '--engine-root', t1]);
    assertOneLineError(wrong, 'wrong password');
    assert.match(wrong.stderr, /fixture\/app-c:2/, 'names the image');
    assertUnchanged(t1, untouched, 'wrong password');
    const noCa = transplant(['preload', '--from', `docker://${basic.host}/fixture/app-c:2`, '--registry-auth', 'alice:s3cret', '--engine-root', t1]);
    assertOneLineError(noCa, 'untrusted certificate');
    assert.match(noCa.stderr, /--ca/);
    const authFile = path.join(s.work, 'auth.json');
    fs.writeFileSync(authFile, JSON.stringify({ auths: { [basic.host]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
    const ok = transplant(['preload', '--from', `docker://${basic.host}/fixture/app-c:2`, '--ca', tls.caCert, '--registry-auth-file', authFile, '--engine-root', t1]);
    assert.equal(ok.code, 0, show(ok));
    assert.equal(readRepositories(t1).get(`${basic.host}/fixture/app-c:2`), appC.id);
    assert.deepEqual(storeDifferences(s.pulled, t1, chainIds(appC.diffIds)).filter((l) => !/repositories|distribution|image IDs/.test(l)), []);

    // Token auth: the Bearer flow with service and scope, Basic credentials at the token server.
    const t2 = path.join(s.work, 'target-token');
    copyTree(s.fx.bareEngineRoot, t2);
    const before2 = snapshotTree(t2);
    const anonymous = transplant(['preload', '--from', `docker://${tokenReg.host}/fixture/app-c:2`, '--engine-root', t2]);
    assertOneLineError(anonymous, 'no credentials');
    assert.match(anonymous.stderr, /fixture\/app-c:2.*credentials/);
    const bad = transplant(['preload', '--from', `docker://${tokenReg.host}/fixture/app-c:2`, '--registry-auth', 'bob:nope', '--engine-root', t2]);
    assertOneLineError(bad, 'wrong password (token)');
    assertUnchanged(t2, before2, 'token refused');
    const exp = transplant(['preload', '--from', `docker://${expiredReg.host}/fixture/app-c:2`, '--registry-auth', 'bob:hunter2', '--engine-root', t2]);
    assertOneLineError(exp, 'expired token');
    assert.match(exp.stderr, /fixture\/app-c:2.*refused a fresh token.*expired/);
    assertUnchanged(t2, before2, 'token refused');
    const dockerConfig = path.join(s.work, 'docker-config');
    fs.mkdirSync(dockerConfig, { recursive: true });
    fs.writeFileSync(path.join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [tokenReg.host]: { username: 'bob', password: 'hunter2' } } }));
    const good = runOkTransplant(['preload', '--from', `docker://${tokenReg.host}/fixture/app-c:2`, '--engine-root', t2], { DOCKER_CONFIG: dockerConfig });
    assert.equal(good.code, 0, show(good));
    assert.equal(readRepositories(t2).get(`${tokenReg.host}/fixture/app-c:2`), appC.id);
  } finally {
    for (const x of [basic, tokenReg, expiredReg, token.aux, expired.aux]) await x.stop();
  }
});

/** The CLI with extra environment variables (DOCKER_CONFIG). */
function runOkTransplant(args: string[], env: Record<string, string>): RunResult {
  return run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), ...args], { env, timeoutMs: 300_000 });
}

test('registry: tampered manifest, tampered blob, 404, missing platform: one line naming the image, target untouched; a cut connection resumes', T, async () => {
  const s = await getSetup();
  const target = path.join(s.work, 'target-fail');
  copyTree(s.fx.bareEngineRoot, target);
  const untouched = snapshotTree(target);
  const appA = (await fetchManifest(s.anon.host, 'fixture/app-a', '1.0')).body;
  const layers = (JSON.parse(appA.toString('utf8')) as { layers: { digest: string; size: number }[] }).layers;
  const biggest = [...layers].sort((x, y) => y.size - x.size)[0]!.digest;

  const manifestProxy = await startProxy(s.anon.port, 'manifest');
  const blobProxy = await startProxy(s.anon.port, 'blob', biggest);
  const cutProxy = await startProxy(s.anon.port, 'cut', biggest);
  try {
    const m = transplant(['preload', '--from', `docker://127.0.0.1:${manifestProxy.port}/fixture/app-a:1.0`, '--engine-root', target]);
    assertOneLineError(m, 'tampered manifest');
    assert.match(m.stderr, /fixture\/app-a:1\.0.*manifest does not match its digest/);
    assertUnchanged(target, untouched, 'failed pull');

    const b = transplant(['preload', '--from', `docker://127.0.0.1:${blobProxy.port}/fixture/app-a:1.0`, '--engine-root', target]);
    assertOneLineError(b, 'tampered blob');
    assert.match(b.stderr, new RegExp(`fixture/app-a:1\\.0.*${biggest}.*(does not match its digest|DiffID)`));
    assertUnchanged(target, untouched, 'failed pull');

    const nf = transplant(['preload', '--from', `docker://${s.anon.host}/fixture/nothing:1`, '--engine-root', target]);
    assertOneLineError(nf, '404');
    assert.match(nf.stderr, /fixture\/nothing:1.*not found/);
    const plat = transplant(['preload', '--from', `docker://${s.anon.host}/multi/app:latest`, '--platform', 'linux/s390x', '--engine-root', target]);
    assertOneLineError(plat, 'platform missing');
    assert.match(plat.stderr, /multi\/app:latest.*linux\/s390x.*linux\/arm\/v7/);
    assertUnchanged(target, untouched, 'failed pull');

    const c = transplant(['preload', '--from', `docker://127.0.0.1:${cutProxy.port}/fixture/app-a:1.0`, '--engine-root', target]);
    assert.equal(c.code, 0, show(c));
    assert.match(c.stderr, new RegExp(`warning: .*${biggest}.*connection dropped after \\d+ of \\d+ bytes.*resuming.*retrying in`), 'the retry is visible');
    assert.equal(readRepositories(target).get(`127.0.0.1:${cutProxy.port}/fixture/app-a:1.0`), s.fx.images.appA.id);
    assert.deepEqual(storeDifferences(s.pulled, target, chainIds(s.fx.images.appA.diffIds)).filter((l) => !/repositories|distribution|image IDs/.test(l)), []);
  } finally {
    for (const p of [manifestProxy, blobProxy, cutProxy]) await p.stop();
  }
});

test('registry → balenaOS disk image: the index platform from device-type.json, the supervisor base layer reused (not fetched), judged like the disk tests', T, async () => {
  const s = await getSetup();
  requireImageTools();
  // An armv7hf device: from multi/app's index the arm/v7 entry (appB) is taken, not this machine's amd64 one.
  const build = path.join(s.work, 'disk-build');
  const img = buildBalenaImage(build, 'balena.img', { dataDir: s.fx.targetResinData, table: 'mbr', dataMiB: 4, deviceType: { slug: 'raspberrypi3', arch: 'armv7hf' } });
  const before = path.join(s.work, 'balena.img.before');
  runOk('cp', ['--sparse=always', img.path, before]);
  const reused = layerCacheIds(path.join(s.fx.targetResinData, 'docker'), [s.fx.supervisor]);
  // The supervisor's base layer is the fixtures' base: served corrupted, so fetching it would fail.
  const appD = JSON.parse((await fetchManifest(s.anon.host, 'fixture/app-d', '3.1')).body.toString('utf8')) as { layers: { digest: string }[] };
  const proxy = await startProxy(s.anon.port, 'blob', appD.layers[0]!.digest);
  const host = `127.0.0.1:${proxy.port}`;
  let dDigest: string;
  try {
    // appB's config says amd64 (the fixtures are built here): --force passes the architecture check.
    const r = transplant(['preload', '--from', `docker://${host}`, '--image', 'multi/app:latest', '--image', 'fixture/app-d:3.1', '--disk', img.path, '--force']);
    assert.equal(r.code, 0, show(r));
    dDigest = (await fetchManifest(s.anon.host, 'fixture/app-d', '3.1')).digest;
  } finally {
    await proxy.stop();
  }
  assert.deepEqual(tableProblems(img.path, 'mbr'), []);
  assertE2fsckClean(img.path, s.work);
  const injected: FixtureImage[] = [
    { ...s.fx.images.appB, refs: [`${host}/multi/app:latest`, `${host}/multi/app@${s.indexDigest}`] },
    { ...s.fx.images.appD, refs: [`${host}/fixture/app-d:3.1`, `${host}/fixture/app-d@${dDigest}`] },
  ];
  await withMountedData(before, s.work, (old) =>
    withMountedData(img.path, s.work, async (mnt) => {
      const engineRoot = path.join(mnt, 'docker');
      assert.ok(fs.existsSync(path.join(engineRoot, 'image/overlay2/distribution/diffid-by-digest/sha256', appD.layers[0]!.digest.slice(7))), 'distribution metadata for the reused base layer');
      const problems = (
        await verifyInjectedEngineRoot({
          engineRoot,
          sourceRoot: s.fx.sourceRoot,
          injected,
          preexisting: [s.fx.supervisor],
          preexistingRoot: path.join(old, 'docker'),
          reusedCacheIds: reused,
          scratchDir: s.work,
        })
      ).filter((p) => !/\): (\.|data\/delete-me|data\/delete-dir|data\/hl-b|data\/replace-me\/new-file): mtime /.test(p));
      assert.deepEqual(problems.length === 1 && /^\(engine log kept/.test(problems[0] as string) ? [] : problems, []);
    }), { readOnly: true });
});

test('registry: --from registry --apps takes exactly the images apps.json names, each from its own reference; extract to a bundle that verifies', T, async () => {
  const s = await getSetup();
  const cDigest = (await fetchManifest(s.anon.host, 'fixture/app-c', '2')).digest;
  const services = { main: `${s.anon.host}/fixture/app-a:1.0`, pinned: `${s.anon.host}/fixture/app-c@${cDigest}` };
  const apps = {
    config: { SUPERVISOR_POLL_INTERVAL: '900000' },
    apps: {
      e7f1d3a2c9b84f0e9d6c5b4a3f2e1d0c: {
        id: 1861234,
        name: 'sensor-fleet',
        class: 'fleet',
        releases: {
          '3c2a7f8e9d1b4c6a5e0f7d8c9b2a1e4f': {
            id: 3094011,
            services: Object.fromEntries(
              Object.entries(services).map(([name, image], i) => [name, { id: 100 + i, image_id: 200 + i, image, running: true, environment: {}, labels: {}, composition: { restart: 'always' } }]),
            ),
            volumes: {},
            networks: {},
          },
        },
      },
    },
  };
  const appsFile = path.join(s.work, 'apps.json');
  fs.writeFileSync(appsFile, JSON.stringify(apps));
  const resinData = path.join(s.work, 'resin-data-apps');
  copyTree(s.fx.targetResinData, resinData);
  const r = transplant(['preload', '--from', 'registry', '--apps', appsFile, '--resin-data', resinData]);
  assert.equal(r.code, 0, show(r));
  const repos = readRepositories(path.join(resinData, 'docker'));
  assert.equal(repos.get(services.main), s.fx.images.appA.id);
  assert.equal(repos.get(services.pinned), s.fx.images.appC.id);
  assert.ok(![...repos.values()].includes(s.fx.images.appD.id), 'only the images apps.json names');
  const ls = transplant(['ls', resinData, '--json']);
  assert.equal(ls.code, 0, show(ls));
  const status = (JSON.parse(ls.stdout) as { appsJson: { services: { image: string; imageId?: string }[] } }).appsJson;
  assert.deepEqual(status.services.map((x) => x.imageId), [s.fx.images.appA.id, s.fx.images.appC.id], 'every service image resolves as the supervisor looks it up');

  // The same source into a bundle (tar-splits made from the registry blobs), which verifies.
  const bundle = path.join(s.work, 'pulled.bundle');
  const x = transplant(['extract', '--from', `docker://${s.anon.host}`, '--image', 'fixture/app-c:2', '--jobs', '1', '-o', bundle]);
  assert.equal(x.code, 0, show(x));
  const vb = transplant(['verify', bundle, '--json']);
  assert.equal(vb.code, 0, show(vb));
  assert.equal((JSON.parse(vb.stdout) as { layerCount: number }).layerCount, s.fx.images.appC.diffIds.length);
});

test('registry references resolve as docker does; challenges, platforms and v2metadata follow the engine', () => {
  const hub = registryRef('alpine:3.20');
  assert.deepEqual([hub.host, hub.path, hub.familiar, hub.fullName, hub.tag], ['registry-1.docker.io', 'library/alpine', 'alpine', 'docker.io/library/alpine', '3.20']);
  assert.deepEqual(pulledReferences(hub, `sha256:${'a'.repeat(64)}`), ['alpine:3.20', `alpine@sha256:${'a'.repeat(64)}`]);
  const io = registryRef('docker.io/library/busybox');
  assert.deepEqual([io.host, io.path, io.familiar, io.tag], ['registry-1.docker.io', 'library/busybox', 'busybox', 'latest']);
  const org = registryRef('myorg/app@sha256:' + 'b'.repeat(64));
  assert.deepEqual([org.path, org.familiar, org.tag, org.digest], ['myorg/app', 'myorg/app', undefined, 'sha256:' + 'b'.repeat(64)]);
  const cloud = registryRef(`registry2.balena-cloud.com/v2/9f2e4c1a7b3d5e8f0a6c2b9d4e7f1a3c@sha256:${'c'.repeat(64)}`);
  assert.deepEqual([cloud.host, cloud.path, cloud.familiar], ['registry2.balena-cloud.com', 'v2/9f2e4c1a7b3d5e8f0a6c2b9d4e7f1a3c', 'registry2.balena-cloud.com/v2/9f2e4c1a7b3d5e8f0a6c2b9d4e7f1a3c']);
  const url = parseRegistryUrl('docker://127.0.0.1:5000/org/app:1.2');
  assert.deepEqual([url.host, url.image?.path, url.image?.tag, url.image?.familiar], ['127.0.0.1:5000', 'org/app', '1.2', '127.0.0.1:5000/org/app']);
  assert.equal(parseRegistryUrl('docker://bh.cr').image, undefined);
  assert.equal(refOnHost('bh.cr', 'myorg/fleet/1.2.3').familiar, 'bh.cr/myorg/fleet/1.2.3');

  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' },
  });
  assert.equal(parseChallenge('Basic realm="x"')?.scheme, 'basic');

  const d = (arch: string, variant?: string): Descriptor => ({ mediaType: '', digest: `sha256:${arch.padEnd(64, '0').slice(0, 64).replace(/[^0-9a-f]/g, '0')}`, size: 1, platform: { os: 'linux', architecture: arch, variant } });
  const index = [d('amd64'), d('arm', 'v6'), d('arm64')];
  assert.equal(choosePlatform(index, platformsForBalenaArch('aarch64')!), index[2], 'arm64 without a variant is v8');
  assert.equal(choosePlatform(index, platformsForBalenaArch('armv7hf')!), index[1], 'an armv7hf device runs arm/v6');
  assert.equal(choosePlatform(index, [parsePlatform('linux/386')]), undefined);

  const one = addV2Metadata(undefined, { Digest: 'sha256:1', SourceRepository: 'a', HMAC: '' });
  assert.equal(one.toString(), '[{"Digest":"sha256:1","SourceRepository":"a","HMAC":""}]');
  const two = addV2Metadata(addV2Metadata(one, { Digest: 'sha256:2', SourceRepository: 'b', HMAC: '' }), { Digest: 'sha256:1', SourceRepository: 'a', HMAC: '' });
  assert.deepEqual((JSON.parse(two.toString()) as { Digest: string }[]).map((m) => m.Digest), ['sha256:2', 'sha256:1'], 'an entry added again moves to the end');
});

test('registry: a layer that cannot be converted in one pass (opaque marker after its directory\'s files, a directory entry after its contents) is read again in two passes, equal to docker pull', T, async () => {
  const s = await getSetup();
  // On top of the fixtures' base layer, so that the image runs; the second layer hand-made with GNU tar in that order.
  const baseTar = path.join(s.work, 'order-base.tar');
  const build = path.join(s.work, 'order-layer');
  fs.mkdirSync(path.join(build, 'data', 'd'), { recursive: true });
  fs.mkdirSync(path.join(build, 'data', 'e'), { recursive: true });
  fs.writeFileSync(path.join(build, 'data', 'd', 'a'), 'kept\n');
  fs.writeFileSync(path.join(build, 'data', 'd', '.wh..wh..opq'), '');
  fs.writeFileSync(path.join(build, 'data', 'e', 'f'), 'late dir\n');
  fs.chmodSync(path.join(build, 'data', 'e'), 0o700);
  runOk('tar', ['--no-recursion', '--format=posix', '--numeric-owner', '-C', build, '-cf', path.join(s.work, 'order.tar'), 'data', 'data/e/f', 'data/e', 'data/d', 'data/d/a', 'data/d/.wh..wh..opq']);
  // The base layer's tar, as docker save gives it.
  const d = await Dockerd.start({ dataRoot: path.join(s.work, 'order-pull') });
  let pushed: { id: string; manifestDigest: string };
  try {
    d.docker(['pull', '-q', `${s.anon.host}/fixture/base:latest`], { timeoutMs: 300_000 });
    d.docker(['save', '-o', baseTar, `${s.anon.host}/fixture/base:latest`]);
    const x = path.join(s.work, 'order-save');
    fs.mkdirSync(x);
    runOk('tar', ['-xf', baseTar, '-C', x]);
    const m = JSON.parse(fs.readFileSync(path.join(x, 'manifest.json'), 'utf8')) as { Layers: string[] }[];
    const layerTars = [...m[0]!.Layers.map((l) => fs.readFileSync(path.join(x, l))), fs.readFileSync(path.join(s.work, 'order.tar'))];
    pushed = await pushImage(s.anon.host, 'order/late', '1', layerTars, ['echo', 'transplant-marker-order']);
    d.docker(['pull', '-q', `${s.anon.host}/order/late:1`], { timeoutMs: 300_000 });
  } finally {
    await d.stop();
  }
  d.cleanup();
  const reference = path.join(s.work, 'order-pull');
  const diffIds = (JSON.parse(fs.readFileSync(path.join(reference, 'image/overlay2/imagedb/content/sha256', pushed.id.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
  const top = chainIds(diffIds).at(-1) as string;
  const ref = snapshotTree(layerDiffDir(reference, top));
  assert.match(ref.get('data/d')?.xattrs ?? '', /trusted\.overlay\.opaque=0x79/, 'judge: docker made data/d opaque');
  assert.equal(ref.get('data/e')?.mode, '0700', 'judge: docker gave data/e its own mode');

  const target = path.join(s.work, 'target-order');
  copyTree(s.fx.bareEngineRoot, target);
  const r = transplant(['preload', '--from', `docker://${s.anon.host}/order/late:1`, '--engine-root', target]);
  assert.equal(r.code, 0, show(r));
  assert.deepEqual(storeDifferences(reference, target, chainIds(diffIds)).filter((l) => !/repositories|distribution|image IDs/.test(l)), []);
  const v = transplant(['verify', target]);
  assert.equal(v.code, 0, show(v));
});

test('registry: inject docker://… takes the registry options as preload does (--ca, --registry-auth, --registry-auth-file, --jobs, --platform, --insecure-registry)', T, async () => {
  const s = await getSetup();
  const tls = makeTls(path.join(s.work, 'tls-inject'));
  const htpasswd = makeHtpasswd(path.join(s.work, 'htpasswd-inject'), 'carol', 'pa55word');
  const basic = await startRegistry({ storage: s.storage, dir: path.join(s.work, 'basic-inject'), tls, htpasswd });
  try {
    const target = path.join(s.work, 'target-inject');
    copyTree(s.fx.bareEngineRoot, target);
    const untouched = snapshotTree(target);
    const noCa = transplant(['inject', `docker://${basic.host}/fixture/app-c:2`, '--registry-auth', 'carol:pa55word', '--engine-root', target]);
    assertOneLineError(noCa, 'inject: untrusted certificate');
    assert.match(noCa.stderr, /--ca/);
    const wrong = transplant(['inject', `docker://${basic.host}/fixture/app-c:2`, '--ca', tls.caCert, '--registry-auth', 'carol:nope', '--engine-root', target]);
    assertOneLineError(wrong, 'inject: wrong password');
    assert.match(wrong.stderr, /fixture\/app-c:2/);
    assertUnchanged(target, untouched, 'inject refused');

    const r = transplant(['inject', `docker://${basic.host}/fixture/app-c:2`, '--ca', tls.caCert, '--registry-auth', 'carol:pa55word', '--jobs', '1', '--engine-root', target]);
    assert.equal(r.code, 0, show(r));
    assert.equal(readRepositories(target).get(`${basic.host}/fixture/app-c:2`), s.fx.images.appC.id);
    assert.deepEqual(storeDifferences(s.pulled, target, chainIds(s.fx.images.appC.diffIds)).filter((l) => !/repositories|distribution|image IDs/.test(l)), []);

    // docker://HOST with --image (the images to pull), credentials from --registry-auth-file.
    const authFile = path.join(s.work, 'auth-inject.json');
    fs.writeFileSync(authFile, JSON.stringify({ auths: { [basic.host]: { auth: Buffer.from('carol:pa55word').toString('base64') } } }));
    const f = transplant(['inject', `docker://${basic.host}`, '--image', 'fixture/app-a:1.0', '--ca', tls.caCert, '--registry-auth-file', authFile, '--engine-root', target]);
    assert.equal(f.code, 0, show(f));
    assert.equal(readRepositories(target).get(`${basic.host}/fixture/app-a:1.0`), s.fx.images.appA.id);

    // --platform picks from the index; --insecure-registry is taken (plain HTTP).
    const arm = path.join(s.work, 'target-inject-arm');
    copyTree(s.fx.bareEngineRoot, arm);
    const p = transplant(['inject', `docker://${s.anon.host}/multi/app:latest`, '--platform', 'linux/arm/v7', '--insecure-registry', s.anon.host, '--engine-root', arm]);
    assert.equal(p.code, 0, show(p));
    assert.equal(readRepositories(arm).get(`${s.anon.host}/multi/app:latest`), s.fx.images.appB.id);
  } finally {
    await basic.stop();
  }
});

test('registry → bundle → engine root writes the distribution/ metadata registry → engine root writes (the bundle carries it); a malformed one is refused', T, async () => {
  const s = await getSetup();
  const refs = ['fixture/app-a:1.0', 'fixture/app-c:2', 'multi/app:latest'];
  const bundle = path.join(s.work, 'dist.bundle');
  const x = transplant(['extract', '--from', `docker://${s.anon.host}`, ...refs.flatMap((r) => ['--image', r]), '--platform', 'linux/amd64', '-o', bundle]);
  assert.equal(x.code, 0, show(x));
  const viaBundle = path.join(s.work, 'target-dist-bundle');
  copyTree(s.fx.bareEngineRoot, viaBundle);
  const i = transplant(['inject', bundle, '--engine-root', viaBundle]);
  assert.equal(i.code, 0, show(i));
  const direct = path.join(s.work, 'target-dist-direct');
  copyTree(s.fx.bareEngineRoot, direct);
  const d = transplant(['preload', '--from', `docker://${s.anon.host}`, ...refs.flatMap((r) => ['--image', r]), '--platform', 'linux/amd64', '--engine-root', direct]);
  assert.equal(d.code, 0, show(d));
  const dist = (root: string): Map<string, Buffer> => files(path.join(root, 'image/overlay2/distribution'));
  const want = dist(direct);
  const got = dist(viaBundle);
  assert.ok(want.size > 0, 'registry → engine root wrote distribution/ metadata');
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), 'the same distribution/ files');
  for (const [p, data] of want) assert.equal(got.get(p)?.toString('utf8'), data.toString('utf8'), `distribution/${p}`);
  // Every layer of app-a (base and its own) maps to what docker pull recorded for it.
  for (const diffId of s.fx.images.appA.diffIds) {
    assert.equal(got.get(`v2metadata-by-diffid/sha256/${diffId.slice(7)}`) !== undefined, true, `v2metadata for ${diffId}`);
  }
  const pulledDist = dist(s.pulled);
  for (const [p, data] of got) if (p.startsWith('diffid-by-digest/')) assert.equal(data.toString('utf8'), pulledDist.get(p)?.toString('utf8'), `docker pull's ${p}`);

  // A manifest whose distribution does not line up with its layers is refused by name.
  const { validateManifest } = await import('../src/bundle/format.js');
  const m = {
    format: 'balena-transplant-bundle', version: 1, createdBy: 't', createdAt: 't',
    layers: [{ chainId: `sha256:${'1'.repeat(64)}`, diffId: `sha256:${'1'.repeat(64)}`, size: 0, hasTarSplit: false, entries: 1, bytes: 0 }],
    images: [{ id: `sha256:${'2'.repeat(64)}`, references: [], chainIds: [`sha256:${'1'.repeat(64)}`], architecture: 'amd64', os: 'linux', distribution: [] as unknown[] }],
  };
  assert.throws(() => validateManifest(m, 'b'), /images\[0\]\.distribution has 0 entries for 1 layers/);
  m.images[0]!.distribution = [{ digest: 'nope', sourceRepository: 'x' }];
  assert.throws(() => validateManifest(m, 'b'), /images\[0\]\.distribution\[0\]\.digest must be a sha256 digest/);
  m.images[0]!.distribution = [{ digest: `sha256:${'3'.repeat(64)}`, sourceRepository: '127.0.0.1:5000/x' }];
  assert.deepEqual(validateManifest(m, 'b').images[0]!.distribution, [{ digest: `sha256:${'3'.repeat(64)}`, sourceRepository: '127.0.0.1:5000/x' }]);
  delete (m.images[0] as { distribution?: unknown }).distribution;
  assert.equal(validateManifest(m, 'b').images[0]!.distribution, undefined, 'a bundle without distribution (older) is read as before');
});
