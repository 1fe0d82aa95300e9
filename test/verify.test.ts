/**
 * `transplant verify`: passes on a good engine root and bundle, and names what is wrong after
 * one byte of one layer file changes, a whiteout is replaced, a metadata file gains a
 * newline, a link disappears or a config changes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, run, runOk, type RunResult } from './harness/exec.js';
import { Dockerd } from './harness/dockerd.js';
import { buildBalenaImage, requireImageTools } from './harness/balena-image.js';
import { copyTree, getFixtures, tempDir } from './harness/fixtures.js';
import { chainIds, layerDiffDir, layerdbDir } from './harness/judge.js';
import { HostReader } from '../src/sources/store-reader.js';
import { verifyEngineRoot } from '../src/verify/verify.js';

function transplant(args: string[]): RunResult {
  return run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), ...args], { timeoutMs: 300_000 });
}

function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(0, 3000)}`;
}

/** Runs verify, expects failure with one error line, and returns stdout + stderr for matching. */
function failing(target: string): string {
  const r = transplant(['verify', target]);
  assert.equal(r.code, 1, show(r));
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, show(r));
  assert.match(lines[0] as string, /^error: verification of .* failed: /, show(r));
  return r.stdout + r.stderr;
}

test('verify: a good engine root passes (CLI, JSON and the exported function), one changed byte is named', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const root = path.join(tempDir('tpvf-'), 'docker');
  copyTree(fx.sourceRoot, root);

  const ok = transplant(['verify', root]);
  assert.equal(ok.code, 0, show(ok));
  assert.match(ok.stdout, /OK$/m);
  const json = transplant(['verify', root, '--json']);
  assert.equal(json.code, 0, show(json));
  const report = JSON.parse(json.stdout) as { ok: boolean; imageCount: number; layerCount: number; problems: string[] };
  assert.equal(report.ok, true);
  assert.ok(report.imageCount >= 6 && report.layerCount >= 7, json.stdout);
  const one = JSON.parse(transplant(['verify', root, '--image', 'fixture/app-a:1.0', '--json']).stdout) as { imageCount: number; layerCount: number };
  assert.deepEqual([one.imageCount, one.layerCount], [1, 3]);
  const direct = await verifyEngineRoot(new HostReader(root), '');
  assert.deepEqual(direct.problems, []);
  // The parent directory (as a resin-data holding docker/) is found too.
  assert.equal(transplant(['verify', path.dirname(root)]).code, 0);

  // One byte of one file of the base layer.
  const [baseChain] = chainIds(fx.images.base.diffIds);
  const hello = path.join(layerDiffDir(root, baseChain as string), 'data', 'hello.txt');
  const original = fs.readFileSync(hello);
  const st = fs.statSync(hello);
  const changed = Buffer.from(original);
  changed[0] ^= 0x20;
  fs.writeFileSync(hello, changed);
  fs.utimesSync(hello, st.atime, st.mtime);
  const out = failing(root);
  assert.match(out, /data\/hello\.txt/, out);
  assert.match(out, new RegExp(baseChain as string), out);
  const r = await verifyEngineRoot(new HostReader(root), '');
  assert.ok(r.problems.some((p) => p.includes('data/hello.txt') && p.includes('checksum')), r.problems.join('\n'));
  fs.writeFileSync(hello, original);
  assert.equal(transplant(['verify', root]).code, 0);
});

test('verify: a replaced whiteout, a newline in a metadata file, a missing link and a changed config are each named', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const root = path.join(tempDir('tpvf-'), 'docker');
  copyTree(fx.sourceRoot, root);
  const aChains = chainIds(fx.images.appA.diffIds);

  // Whiteout → regular file (its tar entry has no content, so only the whiteout check can see it).
  const wh = path.join(layerDiffDir(root, aChains[1] as string), 'data', 'delete-me');
  assert.ok(fs.lstatSync(wh).isCharacterDevice());
  fs.rmSync(wh);
  fs.writeFileSync(wh, '');
  let out = failing(root);
  assert.match(out, /data\/delete-me must be a whiteout/, out);
  fs.rmSync(wh);
  run('mknod', [wh, 'c', '0', '0']);
  assert.equal(transplant(['verify', root]).code, 0);

  // Opaque directory loses its marker.
  const opaque = path.join(layerDiffDir(root, aChains[1] as string), 'data', 'replace-me');
  run('setfattr', ['-x', 'trusted.overlay.opaque', opaque]);
  out = failing(root);
  assert.match(out, /data\/replace-me must be an opaque directory/, out);
  run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', opaque]);

  // A trailing newline in `size`.
  const size = path.join(layerdbDir(root), 'sha256', (aChains[2] as string).slice(7), 'size');
  const sizeText = fs.readFileSync(size, 'utf8');
  fs.writeFileSync(size, sizeText + '\n');
  out = failing(root);
  assert.match(out, new RegExp(`layer ${aChains[2]} has no valid size file`), out);
  fs.writeFileSync(size, sizeText);

  // A missing l/ link.
  const cacheId = fs.readFileSync(path.join(layerdbDir(root), 'sha256', (aChains[1] as string).slice(7), 'cache-id'), 'utf8');
  const link = fs.readFileSync(path.join(root, 'overlay2', cacheId, 'link'), 'utf8');
  fs.rmSync(path.join(root, 'overlay2', 'l', link));
  out = failing(root);
  assert.match(out, new RegExp(`overlay2/l/${link} is missing`), out);
  fs.symlinkSync(`../${cacheId}/diff`, path.join(root, 'overlay2', 'l', link));

  // A config that no longer matches its ID.
  const config = path.join(root, 'image', 'overlay2', 'imagedb', 'content', 'sha256', fx.images.appD.id.slice(7));
  const bytes = fs.readFileSync(config);
  fs.writeFileSync(config, Buffer.concat([bytes, Buffer.from(' ')]));
  out = failing(root);
  assert.match(out, new RegExp(`image ${fx.images.appD.id}: its config hashes to`), out);
  fs.writeFileSync(config, bytes);

  const ok = transplant(['verify', root]);
  assert.equal(ok.code, 0, show(ok));
});

test('verify: a bundle passes, and one changed byte of a layer file in it is named', { timeout: 600_000 }, async () => {
  const fx = await getFixtures();
  const work = tempDir('tpvb-');
  const bundle = path.join(work, 'a.tar');
  const x = transplant(['extract', '--from', fx.sourceRoot, '--image', 'fixture/app-a:1.0', '-o', bundle]);
  assert.equal(x.code, 0, show(x));
  const ok = transplant(['verify', bundle, '--json']);
  assert.equal(ok.code, 0, show(ok));
  const report = JSON.parse(ok.stdout) as { ok: boolean; layerCount: number };
  assert.deepEqual([report.ok, report.layerCount], [true, 3]);

  const data = fs.readFileSync(bundle);
  const at = data.indexOf(Buffer.from('hard linked content\n'));
  assert.ok(at > 0, 'the bundle holds data/hl-a');
  data[at] = 'H'.charCodeAt(0);
  const bad = path.join(work, 'bad.tar');
  fs.writeFileSync(bad, data);
  const out = failing(bad);
  assert.match(out, /data\/hl-a/, out);
});

test('verify: a balenaOS disk image is checked without mounting, left unchanged, and a changed byte in it is named', { timeout: 600_000 }, async () => {
  requireImageTools();
  const work = tempDir('tpvd-');
  // A small engine root made by a real engine (docker import of a layer with a whiteout and an opaque dir).
  const stage = path.join(work, 'stage');
  fs.mkdirSync(path.join(stage, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(stage, 'gone'));
  fs.writeFileSync(path.join(stage, 'etc', 'hello'), 'hello disk\n');
  fs.writeFileSync(path.join(stage, 'etc', 'big'), Buffer.alloc(3 << 20, 'b'));
  fs.writeFileSync(path.join(stage, 'gone', '.wh..wh..opq'), '');
  fs.writeFileSync(path.join(stage, 'gone', '.wh.deleted'), '');
  const layerTar = path.join(work, 'layer.tar');
  runOk('tar', ['--format=posix', '--numeric-owner', '--sort=name', '-C', stage, '-cf', layerTar, '.']);
  const tree = path.join(work, 'tree');
  const engine = path.join(tree, 'docker');
  fs.mkdirSync(path.join(tree, 'resin-data'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'remove_me_to_reset'), '');
  const d = await Dockerd.start({ dataRoot: engine });
  try {
    d.docker(['import', layerTar, 'disk/test:1']);
  } finally {
    await d.stop();
  }
  d.cleanup();

  const img = buildBalenaImage(work, 'a.img', { dataDir: tree });
  const before = runOk('sha256sum', [img.path]).stdout.slice(0, 64);
  const ok = transplant(['verify', img.path]);
  assert.equal(ok.code, 0, show(ok));
  assert.match(ok.stdout, /a\.img:resin-data: 1 image, 1 layer checked: OK/, show(ok));
  assert.equal(runOk('sha256sum', [img.path]).stdout.slice(0, 64), before, 'verify changed the disk image');

  const layerdb = path.join(engine, 'image', 'overlay2', 'layerdb', 'sha256');
  const chain = fs.readdirSync(layerdb).find((h) => /^[0-9a-f]{64}$/.test(h)) as string;
  const cacheId = fs.readFileSync(path.join(layerdb, chain, 'cache-id'), 'utf8');
  const hello = path.join(engine, 'overlay2', cacheId, 'diff', 'etc', 'hello');
  fs.writeFileSync(hello, 'jello disk\n');
  const bad = buildBalenaImage(work, 'b.img', { dataDir: tree });
  const out = failing(bad.path);
  assert.match(out, /file \.\/etc\/hello: does not match the checksum/, out);
});
