/**
 * The core, end to end (issue "The core"): images extracted from a real engine's data root
 * into a bundle, injected into a balenaOS-like resin-data and into a bare engine root,
 * then judged by a real engine and by external tools, file by file and attribute by
 * attribute. Runs the CLI as a user would (`node bin/transplant …`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dockerd } from './harness/dockerd.js';
import { repoRoot, run, type RunResult } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { chainIds, diffSnapshots, layerCacheId, layerCacheIds, metadataProblems, overlayProblems, snapshotTree, treeDigest } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

const T = { timeout: 600_000 };

function transplant(args: string[]): RunResult {
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: the CLI is not there yet`);
  return run(process.execPath, [cli, ...args], { timeoutMs: 300_000 });
}

function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(0, 3000)}`;
}

/** Exit 1 with exactly one line `error: …` on stderr. */
function assertOneLineError(r: RunResult, what: string): void {
  assert.equal(r.code, 1, `${what}: exit code 1 expected\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr expected\n${show(r)}`);
  assert.match(lines[0] as string, /^error: \S/, `${what}: the line starts with "error: "\n${show(r)}`);
}

interface Extracted {
  fx: Fixtures;
  work: string;
  bundle: string;
  /** The images selected, in the order of the --image options. */
  selected: FixtureImage[];
  sourceDigestBefore: string;
}

let extracted: Promise<Extracted> | undefined;

/** The one extract every later test builds on (run once; its failure fails them all). */
function getExtracted(): Promise<Extracted> {
  extracted ??= (async () => {
    const fx = await getFixtures();
    const work = tempDir('tpcore-');
    const sourceDigestBefore = treeDigest(fx.sourceRoot);
    const bundle = path.join(work, 'apps.bundle');
    const { base, appA, appB, appC, appD } = fx.images;
    const selections: [string, FixtureImage][] = [
      ['fixture/app-a:1.0', appA], // name:tag
      ['fixture/app-b', appB], // name only = :latest
      [fx.digestRef, appC], // name@sha256:<digest>
      [base.id, base], // full ID with sha256:
      [appD.id.slice(7, 13).toUpperCase() + appD.id.slice(13, 19), appD], // 12-hex prefix, mixed case
    ];
    const r = transplant(['extract', '--from', fx.sourceRoot, ...selections.flatMap(([s]) => ['--image', s]), '--output', bundle]);
    assert.equal(r.code, 0, `extract failed\n${show(r)}`);
    assert.ok(fs.existsSync(bundle) && fs.statSync(bundle).size > 0, `extract wrote no bundle at ${bundle}\n${show(r)}`);
    return { fx, work, bundle, selected: selections.map(([, img]) => img), sourceDigestBefore };
  })();
  return extracted;
}

function lsJson(target: string): { id: string; references: string[] }[] {
  const r = transplant(['ls', target, '--json']);
  assert.equal(r.code, 0, `ls --json ${target}\n${show(r)}`);
  const parsed = JSON.parse(r.stdout) as { images?: unknown; appsJson?: unknown };
  assert.ok(Array.isArray(parsed.images), `ls --json prints { images: [...] }\n${r.stdout.slice(0, 2000)}`);
  assert.ok('appsJson' in parsed, `ls --json says whether there is an apps.json (null when not)\n${r.stdout.slice(0, 2000)}`);
  return parsed.images as { id: string; references: string[] }[];
}

test('extract: by tag, name, digest reference, full ID and ID prefix; ls shows every image and reference', T, async () => {
  const { fx, bundle, selected } = await getExtracted();
  const text = transplant(['ls', bundle]);
  assert.equal(text.code, 0, `ls ${bundle}\n${show(text)}`);
  for (const img of selected) {
    assert.ok(text.stdout.includes(img.id.slice(7, 19)), `ls shows ${img.key}'s ID\n${text.stdout}`);
    for (const ref of img.refs) assert.ok(text.stdout.includes(ref), `ls shows ${ref}\n${text.stdout}`);
  }
  assert.ok(!text.stdout.includes('fixture/unselected'), `ls shows an image that was not selected\n${text.stdout}`);

  const listed = lsJson(bundle);
  assert.deepEqual(listed.map((i) => i.id).sort(), selected.map((i) => i.id).sort(), 'the bundle holds exactly the selected images');
  for (const img of selected) {
    const l = listed.find((i) => i.id === img.id);
    assert.deepEqual([...(l?.references ?? [])].sort(), [...img.refs].sort(), `every reference of ${img.key} goes with it`);
  }
  assert.ok(!listed.some((i) => i.id === fx.images.unselected.id));
});

test('extract: hex IDs without sha256:, upper-case prefixes, a root held as var/lib/docker/', T, async () => {
  const { fx, work } = await getExtracted();
  const { appA, appB, base } = fx.images;
  const holder = path.join(work, 'rootfs');
  copyTree(fx.sourceRoot, path.join(holder, 'var', 'lib', 'docker'));
  const bundle = path.join(work, 'ids.bundle');
  const r = transplant([
    'extract', '--from', holder,
    '--image', appB.id.slice(7).toUpperCase(), // full ID, hex only, upper case
    '--image', appA.id.slice(7, 21).toUpperCase(), // 14-hex prefix, upper case
    '--output', bundle,
  ]);
  assert.equal(r.code, 0, show(r));
  const listed = lsJson(bundle);
  assert.deepEqual(listed.map((i) => i.id).sort(), [appA.id, appB.id].sort());
  assert.ok(!listed.some((i) => i.id === base.id), 'a parent image is not taken along unless selected');
});

test('extract: without --image exits 1 listing the images; a bad reference exits 1 with one line', T, async () => {
  const { fx, work } = await getExtracted();
  const out = path.join(work, 'none.bundle');
  const r = transplant(['extract', '--from', fx.sourceRoot, '--output', out]);
  assert.equal(r.code, 1, show(r));
  for (const img of Object.values(fx.images)) {
    assert.ok((r.stdout + r.stderr).includes(img.refs[0] as string), `lists ${img.refs[0]}\n${show(r)}`);
  }
  assert.ok(!fs.existsSync(out), 'wrote no bundle');

  for (const bad of ['fixture/nope:1', 'fixture/app-a:2.0', 'sha256:' + '0'.repeat(64), 'fixture/app-c@sha256:' + 'f'.repeat(64)]) {
    const b = transplant(['extract', '--from', fx.sourceRoot, '--image', bad, '--output', out]);
    assertOneLineError(b, `extract --image ${bad}`);
    assert.ok(b.stderr.includes(bad) || b.stderr.includes(bad.slice(0, 19)), `the error names ${bad}\n${show(b)}`);
    assert.ok(!fs.existsSync(out), `wrote no bundle for ${bad}`);
  }
  // A prefix shorter than 12 hex is not an ID.
  const short = transplant(['extract', '--from', fx.sourceRoot, '--image', fx.images.appD.id.slice(7, 15), '--output', out]);
  assert.notEqual(short.code, 0, `an 8-hex prefix is refused\n${show(short)}`);
  // Bad usage is exit 2.
  assert.equal(transplant(['extract', '--image', 'x', '--output', out]).code, 2, 'extract without --from is bad usage');
  assert.equal(transplant(['no-such-command']).code, 2, 'an unknown command is bad usage');
});

interface Injected {
  resinData: string;
  engineRoot: string;
  reused: Map<string, string>;
  digestAfterFirst: string;
  digestAfterSecond: string;
  first: RunResult;
  second: RunResult;
}

let injected: Promise<Injected> | undefined;

/** Injects the bundle into a copy of the target resin-data, twice. */
function getInjected(): Promise<Injected> {
  injected ??= (async () => {
    const { fx, work, bundle } = await getExtracted();
    const resinData = path.join(work, 'target', 'resin-data');
    copyTree(fx.targetResinData, resinData);
    const engineRoot = path.join(resinData, 'docker');
    const reused = layerCacheIds(engineRoot, [fx.supervisor]);
    const first = transplant(['inject', bundle, '--resin-data', resinData]);
    assert.equal(first.code, 0, `inject --resin-data\n${show(first)}`);
    const digestAfterFirst = treeDigest(resinData);
    const second = transplant(['inject', bundle, '--resin-data', resinData]);
    const digestAfterSecond = treeDigest(resinData);
    return { resinData, engineRoot, reused, digestAfterFirst, digestAfterSecond, first, second };
  })();
  return injected;
}

test('inject --resin-data: a real engine finds, runs and saves every image, files equal the source, supervisor intact', T, async () => {
  const { fx, work, selected, sourceDigestBefore } = await getExtracted();
  const inj = await getInjected();
  assert.ok(fs.existsSync(path.join(inj.resinData, 'remove_me_to_reset')), 'remove_me_to_reset is still there');
  assert.ok(fs.statSync(path.join(inj.resinData, 'resin-data')).isDirectory(), 'resin-data/ is still there');
  const problems = await verifyInjectedEngineRoot({
    engineRoot: inj.engineRoot,
    sourceRoot: fx.sourceRoot,
    injected: selected,
    preexisting: [fx.supervisor],
    reusedCacheIds: inj.reused,
    absentRefs: fx.images.unselected.refs,
    scratchDir: work,
  });
  assert.deepEqual(problems, [], problems.join('\n'));
  assert.equal(treeDigest(fx.sourceRoot), sourceDigestBefore, 'the source is unchanged');
  // ls reads a resin-data directory (its engine root is docker/).
  const listed = lsJson(inj.resinData).map((i) => i.id).sort();
  assert.deepEqual(listed, [...selected.map((i) => i.id), fx.supervisor.id].sort(), 'ls of the resin-data lists the injected images and the supervisor');
});

test('inject: the same bundle a second time changes nothing', T, async () => {
  const inj = await getInjected();
  assert.equal(inj.second.code, 0, `second inject\n${show(inj.second)}`);
  assert.equal(inj.digestAfterSecond, inj.digestAfterFirst, 'the tree (every file and attribute) is the same after the second inject');
});

test('inject --engine-root: into a bare engine root', T, async () => {
  const { fx, work, bundle, selected, sourceDigestBefore } = await getExtracted();
  const root = path.join(work, 'bare', 'docker');
  copyTree(fx.bareEngineRoot, root);
  const r = transplant(['inject', bundle, '--engine-root', root]);
  assert.equal(r.code, 0, `inject --engine-root\n${show(r)}`);
  const problems = await verifyInjectedEngineRoot({
    engineRoot: root,
    sourceRoot: fx.sourceRoot,
    injected: selected,
    absentRefs: fx.images.unselected.refs,
    scratchDir: work,
  });
  assert.deepEqual(problems, [], problems.join('\n'));
  assert.equal(treeDigest(fx.sourceRoot), sourceDigestBefore, 'the source is unchanged');
});

test('inject --dry-run writes nothing', T, async () => {
  const { fx, work, bundle } = await getExtracted();
  const resinData = path.join(work, 'dry', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const before = treeDigest(resinData);
  const r = transplant(['inject', bundle, '--resin-data', resinData, '--dry-run']);
  assert.equal(r.code, 0, `inject --dry-run\n${show(r)}`);
  assert.ok(r.stdout.trim() !== '', 'a dry run prints the plan');
  assert.equal(treeDigest(resinData), before, 'the target is unchanged');
  const bare = path.join(work, 'dry', 'bare');
  copyTree(fx.bareEngineRoot, bare);
  const bareBefore = treeDigest(bare);
  const b = transplant(['inject', bundle, '--engine-root', bare, '--dry-run']);
  assert.equal(b.code, 0, show(b));
  assert.equal(treeDigest(bare), bareBefore, 'the bare engine root is unchanged');
});

test('inject refuses a target whose engine is running (without --force) and leaves it unchanged', T, async () => {
  const { fx, work, bundle } = await getExtracted();
  const resinData = path.join(work, 'live', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const engineRoot = path.join(resinData, 'docker');
  const d = await Dockerd.start({ dataRoot: engineRoot });
  let r: RunResult;
  let before: string[];
  let after: string[];
  try {
    // What the engine itself does not touch while idle.
    const digest = (): string[] => [
      treeDigest(path.join(engineRoot, 'image')),
      treeDigest(path.join(engineRoot, 'overlay2')),
      fs.readdirSync(resinData).sort().join(','),
    ];
    before = digest();
    r = transplant(['inject', bundle, '--resin-data', resinData]);
    after = digest();
    const e = transplant(['inject', bundle, '--engine-root', engineRoot]);
    assertOneLineError(e, 'inject --engine-root under a live engine');
    assert.deepEqual(digest(), before, 'the target is unchanged');
    assert.equal(d.docker(['image', 'inspect', '--format', '{{.Id}}', fx.supervisor.refs[0] as string]).trim(), fx.supervisor.id);
  } finally {
    await d.stop();
  }
  assertOneLineError(r, 'inject --resin-data under a live engine');
  assert.match(r.stderr, /engine|dockerd|running/i, `the error says an engine is running\n${show(r)}`);
  assert.deepEqual(after, before, 'the target is unchanged');
  d.cleanup();
});

test('bad usage exits 2', T, async () => {
  const { bundle } = await getExtracted();
  assert.equal(transplant(['inject', bundle]).code, 2, 'inject without a target is bad usage');
  assert.equal(transplant(['ls']).code, 2, 'ls without an argument is bad usage');
});

/**
 * Gives a layer the target already has (the supervisor's top layer) the cache ID and link
 * ID that a source layer with descendants uses, so that the injection must pick new ones
 * and rewrite the `lower` files above it.
 */
function collide(targetRoot: string, targetChain: string, sourceRoot: string, sourceChain: string): { cacheId: string; link: string } {
  const db = (root: string, chain: string): string => path.join(root, 'image', 'overlay2', 'layerdb', 'sha256', chain.slice(7));
  const ov = (root: string, ...p: string[]): string => path.join(root, 'overlay2', ...p);
  const tCache = fs.readFileSync(path.join(db(targetRoot, targetChain), 'cache-id'), 'utf8');
  const sCache = fs.readFileSync(path.join(db(sourceRoot, sourceChain), 'cache-id'), 'utf8');
  const tLink = fs.readFileSync(ov(targetRoot, tCache, 'link'), 'utf8');
  const sLink = fs.readFileSync(ov(sourceRoot, sCache, 'link'), 'utf8');
  assert.ok(!fs.existsSync(ov(targetRoot, sCache)) && !fs.existsSync(ov(targetRoot, 'l', sLink)), 'no collision before');
  fs.renameSync(ov(targetRoot, tCache), ov(targetRoot, sCache));
  fs.writeFileSync(path.join(db(targetRoot, targetChain), 'cache-id'), sCache);
  fs.rmSync(ov(targetRoot, 'l', tLink));
  fs.writeFileSync(ov(targetRoot, sCache, 'link'), sLink);
  fs.symlinkSync(`../${sCache}/diff`, ov(targetRoot, 'l', sLink));
  return { cacheId: sCache, link: sLink };
}

test('inject: cache IDs and link IDs that collide with the target\'s are replaced, lower files follow', T, async () => {
  const { fx, work, bundle, selected } = await getExtracted();
  const resinData = path.join(work, 'collide', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const engineRoot = path.join(resinData, 'docker');
  const supChains = chainIds(fx.supervisor.diffIds);
  const appAChains = chainIds(fx.images.appA.diffIds);
  // appA's second layer has descendants (appA's third, appC's layers).
  const taken = collide(engineRoot, supChains[supChains.length - 1] as string, fx.sourceRoot, appAChains[1] as string);
  assert.deepEqual(overlayProblems(engineRoot), [], 'the prepared target is consistent');
  const reused = layerCacheIds(engineRoot, [fx.supervisor]);
  const r = transplant(['inject', bundle, '--resin-data', resinData]);
  assert.equal(r.code, 0, `inject\n${show(r)}`);
  assert.notEqual(layerCacheId(engineRoot, appAChains[1] as string), taken.cacheId, 'the colliding cache ID was not reused for another layer');
  const problems = await verifyInjectedEngineRoot({
    engineRoot,
    sourceRoot: fx.sourceRoot,
    injected: selected,
    preexisting: [fx.supervisor],
    reusedCacheIds: reused,
    scratchDir: work,
  });
  assert.deepEqual(problems, [], problems.join('\n'));
});

test('inject: into a target that already holds some of the images (a smaller bundle first)', T, async () => {
  const { fx, work, bundle, selected } = await getExtracted();
  const small = path.join(work, 'small.bundle');
  const e = transplant(['extract', '--from', fx.sourceRoot, '--image', 'fixture/app-a:1.0', '--image', 'fixture/app-d:3.1', '--output', small]);
  assert.equal(e.code, 0, show(e));
  const resinData = path.join(work, 'partial', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const engineRoot = path.join(resinData, 'docker');
  const first = transplant(['inject', small, '--resin-data', resinData]);
  assert.equal(first.code, 0, show(first));
  const reused = layerCacheIds(engineRoot, [fx.images.appA, fx.images.appD, fx.supervisor]);
  const second = transplant(['inject', bundle, '--resin-data', resinData]);
  assert.equal(second.code, 0, show(second));
  const problems = await verifyInjectedEngineRoot({
    engineRoot,
    sourceRoot: fx.sourceRoot,
    injected: selected,
    preexisting: [fx.supervisor],
    reusedCacheIds: reused,
    absentRefs: fx.images.unselected.refs,
    scratchDir: work,
  });
  assert.deepEqual(problems, [], problems.join('\n'));
});

test('inject: a truncated bundle fails with one line and leaves the target as it was', T, async () => {
  const { fx, work, bundle } = await getExtracted();
  const cut = path.join(work, 'cut.bundle');
  fs.copyFileSync(bundle, cut);
  // Past the manifest and the first layers: the failure comes in the middle of writing.
  fs.truncateSync(cut, Math.floor(fs.statSync(bundle).size * 0.7));
  const resinData = path.join(work, 'cut', 'resin-data');
  copyTree(fx.targetResinData, resinData);
  const before = snapshotTree(resinData);
  const r = transplant(['inject', cut, '--resin-data', resinData]);
  assertOneLineError(r, 'inject of a truncated bundle');
  // Directory times may change (something was written and taken back); nothing else may.
  assert.deepEqual(diffSnapshots(before, snapshotTree(resinData), { directoryTimes: false }), []);
  const engineRoot = path.join(resinData, 'docker');
  assert.deepEqual(overlayProblems(engineRoot), []);
  assert.deepEqual(metadataProblems(engineRoot), []);

  const missing = transplant(['inject', path.join(work, 'no-such.bundle'), '--resin-data', resinData]);
  assertOneLineError(missing, 'inject of a missing bundle');
  const noRoot = transplant(['extract', '--from', path.join(work, 'no-such-root'), '--image', 'x', '--output', path.join(work, 'x.bundle')]);
  assertOneLineError(noRoot, 'extract from a missing directory');
  const noLs = transplant(['ls', path.join(work, 'no-such-thing')]);
  assertOneLineError(noLs, 'ls of a missing path');
});

test('inject: a bundle with one flipped content byte is refused and the target left as it was', T, async () => {
  const { fx, work, bundle } = await getExtracted();
  const bad = path.join(work, 'flipped.bundle');
  const bytes = fs.readFileSync(bundle);
  const at = bytes.indexOf('hard linked content');
  assert.ok(at > 0, 'the bundle holds the content of data/hl-a');
  bytes[at] = (bytes[at] as number) ^ 0x20; // 'h' -> 'H': same size, every tar header intact
  fs.writeFileSync(bad, bytes);
  const resinData = path.join(work, 'flipped', 'resin-data');
  copyTree(fx.bareEngineRoot, path.join(resinData, 'docker'));
  const before = snapshotTree(resinData);
  // The layer no longer matches its DiffID (tar-split CRC-64 per file, sha256 of the stream).
  const r = transplant(['inject', bad, '--engine-root', path.join(resinData, 'docker')]);
  assertOneLineError(r, 'inject of a corrupted bundle');
  assert.deepEqual(diffSnapshots(before, snapshotTree(resinData), { directoryTimes: false }), []);
});
