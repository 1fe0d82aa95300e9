/**
 * Tests of the test harness itself: the fixtures hold what they promise, and the judges
 * notice every kind of difference they are meant to catch (a judge that cannot fail
 * proves nothing).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { runOk } from './harness/exec.js';
import { copyTree, fixtureAttributeProblems, getFixtures, tempDir } from './harness/fixtures.js';
import {
  chainIds,
  compareLayerFiles,
  engineLogProblems,
  layerDiffDir,
  metadataProblems,
  overlayProblems,
  readRepositories,
  treeDigest,
} from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

test('fixtures: the source holds every attribute, shared base, tags and a digest reference', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  assert.deepEqual(fixtureAttributeProblems(fx.sourceRoot, fx.images), []);
  const repos = readRepositories(fx.sourceRoot);
  assert.equal(repos.get('fixture/base:latest'), fx.images.base.id);
  assert.equal(repos.get('fixture/base:v1'), fx.images.base.id);
  assert.equal(repos.get(fx.digestRef), fx.images.appC.id);
  const base = fx.images.base.diffIds[0];
  for (const img of Object.values(fx.images)) assert.equal(img.diffIds[0], base, `${img.key} shares the base layer`);
  assert.ok(fx.images.appC.diffIds.length >= 4, 'appC is built on appA (a deeper chain)');
  assert.deepEqual(overlayProblems(fx.sourceRoot), []);
  assert.deepEqual(metadataProblems(fx.sourceRoot), []);
});

test('fixtures: the target is a balenaOS-like resin-data with a supervisor sharing the base layer', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  assert.ok(fs.statSync(path.join(fx.targetResinData, 'remove_me_to_reset')).isFile());
  assert.ok(fs.statSync(path.join(fx.targetResinData, 'resin-data')).isDirectory());
  const engine = path.join(fx.targetResinData, 'docker');
  assert.equal(readRepositories(engine).get('balena/aarch64-supervisor:v17'), fx.supervisor.id);
  assert.equal(fx.supervisor.diffIds[0], fx.images.base.diffIds[0]);
  // The shared base layer has the same files in both (docker load sets no time on diff/ itself).
  const [baseChain] = chainIds(fx.images.base.diffIds);
  const src = layerDiffDir(fx.sourceRoot, baseChain as string);
  const dst = layerDiffDir(engine, baseChain as string);
  assert.notEqual(src, dst.replace(engine, fx.sourceRoot), 'the target has its own cache ID for the base layer');
  assert.deepEqual(compareLayerFiles(src, dst, { ignoreRootAttributes: true }), []);
  assert.deepEqual(overlayProblems(engine), []);
  assert.deepEqual(metadataProblems(engine), []);
  assert.ok(fs.existsSync(path.join(fx.bareEngineRoot, 'image', 'overlay2')), 'bare engine root initialised');
  assert.equal(readRepositories(fx.bareEngineRoot).size, 0);
});

test('judge: treeDigest and compareLayerFiles notice every attribute change', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const [baseChain] = chainIds(fx.images.base.diffIds);
  const src = layerDiffDir(fx.sourceRoot, baseChain as string);
  const work = tempDir('tpjudge-');
  const before = treeDigest(src);
  const mutations: [string, string, string][] = [
    ['ns mtime', 'touch -d @1500000000.123456788 data/ns-time', 'data/ns-time: mtime'],
    ['symlink mtime', 'touch -h -d @1400000000.000000002 data/rel-link', 'data/rel-link: mtime'],
    ['mode', 'chmod 0755 data/suid', 'data/suid: mode'],
    ['owner', 'chown 100001 data/bigid', 'data/bigid: uid'],
    ['group', 'chgrp 200001 data/bigid', 'data/bigid: gid'],
    ['user xattr', 'setfattr -n user.color -v bluE data/xattr-file', 'data/xattr-file: xattrs'],
    ['capability', 'setcap -r data/cap-file', 'data/cap-file: xattrs'],
    ['trusted xattr', 'setfattr -n trusted.overlay.opaque -v y data/sub', 'data/sub: xattrs'],
    ['symlink target', 'ln -sfn /etc/group data/abs-link', 'data/abs-link: link'],
    ['content, same size and time', "t=$(stat -c %.9Y data/hello.txt); printf 'HELLO\\n' > data/hello.txt; touch -d @$t data/hello.txt", 'data/hello.txt: sha256'],
    ['hard link broken', "cp -p data/hl-a x && rm data/hl-b && mv x data/hl-b", 'data/hl-b: nlink'],
    ['device numbers', 'rm data/dev-null && mknod data/dev-null c 1 5', 'data/dev-null: rdev'],
    ['type', 'rm data/fifo && touch data/fifo', 'data/fifo: type'],
    ['extra file', ': > data/extra', 'data/extra: only in the second tree'],
    ['missing file', 'rm data/empty', 'data/empty: only in the first tree'],
  ];
  for (const [what, script, expected] of mutations) {
    const copy = path.join(work, what.replace(/\W+/g, '-'));
    copyTree(src, copy);
    assert.deepEqual(compareLayerFiles(src, copy), [], `cp -a copy is equal (${what})`);
    runOk('/bin/bash', ['-euo', 'pipefail', '-c', script], { cwd: copy });
    const diffs = compareLayerFiles(src, copy);
    assert.ok(diffs.some((d) => d.startsWith(expected)), `${what}: expected a difference "${expected}…", got ${JSON.stringify(diffs)}`);
    assert.notEqual(treeDigest(copy), before, `treeDigest changes with ${what}`);
    fs.rmSync(copy, { recursive: true, force: true });
  }
  assert.equal(treeDigest(src), before, 'the source layer is unchanged');
});

test('judge: overlay and metadata checks catch orphans, broken links, wrong lower and newlines', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const work = tempDir('tpjudge-');
  const root = path.join(work, 'root');
  copyTree(fx.sourceRoot, root);
  assert.deepEqual(overlayProblems(root), []);
  assert.deepEqual(metadataProblems(root), []);
  const chains = chainIds(fx.images.appA.diffIds);
  const db = path.join(root, 'image', 'overlay2', 'layerdb', 'sha256');
  const topCache = fs.readFileSync(path.join(db, (chains[2] as string).slice(7), 'cache-id'), 'utf8');
  const baseCache = fs.readFileSync(path.join(db, (chains[0] as string).slice(7), 'cache-id'), 'utf8');

  fs.mkdirSync(path.join(root, 'overlay2', 'orphan0123456789', 'diff'), { recursive: true });
  fs.writeFileSync(path.join(root, 'overlay2', 'orphan0123456789', 'link'), 'ORPHANLINKAAAAAAAAAAAAAAAA');
  fs.symlinkSync('../orphan0123456789/diff', path.join(root, 'overlay2', 'l', 'ORPHANLINKAAAAAAAAAAAAAAAA'));
  const baseLink = fs.readFileSync(path.join(root, 'overlay2', baseCache, 'link'), 'utf8');
  fs.rmSync(path.join(root, 'overlay2', 'l', baseLink));
  const lower = fs.readFileSync(path.join(root, 'overlay2', topCache, 'lower'), 'utf8');
  fs.writeFileSync(path.join(root, 'overlay2', topCache, 'lower'), lower.split(':').reverse().join(':'));
  const problems = overlayProblems(root).join('\n');
  assert.match(problems, /orphan0123456789 is used by no layer/);
  assert.match(problems, new RegExp(`overlay2/l/${baseLink} should point to`));
  assert.match(problems, new RegExp(`overlay2/${topCache}/lower is`));

  fs.appendFileSync(path.join(db, (chains[1] as string).slice(7), 'size'), '\n');
  fs.appendFileSync(path.join(root, 'image', 'overlay2', 'repositories.json'), '\n');
  const meta = metadataProblems(root).join('\n');
  assert.match(meta, /\/size ends with a newline/);
  assert.match(meta, /repositories.json ends with a newline/);
});

test('judge: engine log checks and a dockerd that reports a broken layer', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  assert.deepEqual(engineLogProblems('time="x" level=info msg="Daemon has completed initialization"'), []);
  // A real engine on a root whose layer `size` ends with a newline drops the layer and logs it.
  const work = tempDir('tpjudge-');
  const root = path.join(work, 'root');
  copyTree(fx.sourceRoot, root);
  const chains = chainIds(fx.images.appB.diffIds);
  const top = path.join(root, 'image', 'overlay2', 'layerdb', 'sha256', (chains[chains.length - 1] as string).slice(7));
  fs.appendFileSync(path.join(top, 'size'), '\n');
  const d = await Dockerd.start({ dataRoot: root });
  let inspect: { code: number };
  try {
    inspect = d.dockerRaw(['image', 'inspect', 'fixture/app-b']);
    assert.equal(d.docker(['run', '--rm', '--network', 'none', 'fixture/app-a:1.0']).trim(), fx.images.appA.marker);
  } finally {
    await d.stop();
  }
  assert.notEqual(inspect.code, 0, 'the engine dropped the image whose layer is broken');
  const problems = engineLogProblems(d.log());
  assert.ok(problems.length > 0, `the log names the broken layer: ${d.log().slice(-2000)}`);
  d.cleanup();
});

test('verify: a faithful copy of the source passes; a missing l/ link and a changed mtime are caught', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const work = tempDir('tpverify-');
  const { base, appA, appB, appC } = fx.images;
  const good = path.join(work, 'good');
  copyTree(fx.sourceRoot, good);
  const ok = await verifyInjectedEngineRoot({ engineRoot: good, sourceRoot: fx.sourceRoot, injected: [base, appA, appC], scratchDir: work });
  assert.deepEqual(ok, [], ok.join('\n'));

  const bad = path.join(work, 'bad');
  copyTree(fx.sourceRoot, bad);
  const bChains = chainIds(appB.diffIds);
  const topDiff = layerDiffDir(bad, bChains[bChains.length - 1] as string);
  const topLink = fs.readFileSync(path.join(path.dirname(topDiff), 'link'), 'utf8');
  fs.rmSync(path.join(bad, 'overlay2', 'l', topLink));
  const aChains = chainIds(appA.diffIds);
  runOk('touch', ['-h', '-d', '@1500000000.5', path.join(layerDiffDir(bad, aChains[2] as string), 'data', 'hello-link')]);
  const problems = (await verifyInjectedEngineRoot({ engineRoot: bad, sourceRoot: fx.sourceRoot, injected: [appA, appB], scratchDir: work })).join('\n');
  assert.match(problems, new RegExp(`overlay2/l/${topLink}`), problems);
  assert.match(problems, /data\/hello-link: mtime/, problems);
  assert.match(problems, /appB .* does not run/, problems);
});
