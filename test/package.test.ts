/**
 * The package as a user gets it (issue 12, "A library" and "Packaging"): `npm pack`, the
 * tarball installed into a scratch project with npm (offline: its dependencies are this
 * checkout's own, given as file: dependencies, and the native helper is built by the
 * package's install script), then the API called from plain JavaScript (CommonJS and ESM)
 * and from TypeScript type-checked with `strict` by this project's tsc. The calls run in
 * child processes that check the library writes nothing to stdout/stderr and installs no
 * process handlers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, run, runOk, requireTools } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';

const T = { timeout: 900_000 };
const ROOT = repoRoot();
const SAMPLE = path.join(ROOT, 'sample');

interface PackFile {
  path: string;
}

function packList(): string[] {
  const r = runOk('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, timeoutMs: 300_000 });
  const json = JSON.parse(r.stdout) as { files: PackFile[] }[];
  return json[0]!.files.map((f) => f.path);
}

test('npm pack holds LICENSE, README, package.json, dist/src with a .d.ts for every module, the JSON schemas; no tests, no source maps without their sources; only dependencies the code imports', T, () => {
  const files = packList();
  const has = new Set(files);
  for (const f of ['LICENSE', 'README.md', 'package.json', 'bin/transplant', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'scripts/build-native.js', 'binding.gyp', 'native/fsx.c']) {
    assert.ok(has.has(f), `${f} is packed`);
  }
  for (const f of files.filter((x) => x.startsWith('dist/src/') && x.endsWith('.js'))) {
    assert.ok(has.has(f.replace(/\.js$/, '.d.ts')), `${f} has its .d.ts`);
  }
  for (const c of ['ls', 'extract', 'inject', 'preload', 'verify', 'error']) assert.ok(has.has(`schemas/${c}.schema.json`), `schemas/${c}.schema.json is packed`);
  assert.deepEqual(files.filter((f) => /(^|\/)test(s)?\/|\.test\.|^bench\/|^sample\//.test(f)), [], 'no tests, benchmarks or sample data');
  // A source map is only useful with the sources it names.
  for (const map of files.filter((f) => f.endsWith('.map'))) {
    const sources = (JSON.parse(fs.readFileSync(path.join(ROOT, map), 'utf8')) as { sources: string[] }).sources;
    for (const s of sources) assert.ok(has.has(path.normalize(path.join(path.dirname(map), s))), `${map} names ${s}, which is packed`);
  }

  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    main: string;
    types: string;
    exports: Record<string, { types: string; default: string } | string>;
    dependencies: Record<string, string>;
  };
  const dot = pkg.exports['.'] as { types: string; default: string };
  for (const f of [pkg.main, pkg.types, dot.types, dot.default]) assert.ok(has.has(f.replace(/^\.\//, '')), `package.json names ${f}, which is packed`);
  // Every declared dependency is required by the packed code, and nothing it requires is undeclared.
  const required = new Set<string>();
  for (const f of files.filter((x) => x.endsWith('.js'))) {
    for (const m of fs.readFileSync(path.join(ROOT, f), 'utf8').matchAll(/require\("([^".][^"]*)"\)/g)) {
      const name = m[1]!.startsWith('@') ? m[1]!.split('/').slice(0, 2).join('/') : m[1]!.split('/')[0]!;
      if (!name.startsWith('node:')) required.add(name);
    }
  }
  assert.deepEqual(Object.keys(pkg.dependencies).sort(), [...required].sort(), 'dependencies are exactly what the code requires');
  for (const gone of ['gpt', 'mbr', 'partitioninfo']) assert.ok(!(gone in pkg.dependencies), `${gone} is not a dependency`);
});

test('library code installs no process handlers, never exits, writes nothing to stdout/stderr, and does not import the CLI', () => {
  const problems: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (p !== path.join(ROOT, 'src', 'cli')) walk(p);
        continue;
      }
      if (!p.endsWith('.ts')) continue;
      const rel = path.relative(ROOT, p);
      const code = fs.readFileSync(p, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      if (/from '(\.\.\/)+cli\//.test(code) || /import\('(\.\.\/)+cli\//.test(code)) problems.push(`${rel} imports src/cli`);
      if (/process\.(exit|on|once|addListener|prependListener)\(/.test(code)) problems.push(`${rel} installs a process handler or exits`);
      if (/process\.(stdout|stderr)\b|console\.(log|error|warn|info)\(/.test(code)) problems.push(`${rel} writes to stdout/stderr`);
    }
  };
  walk(path.join(ROOT, 'src'));
  assert.deepEqual(problems, []);
});

/** The scratch project, installed once for the tests below. */
let scratch: string | undefined;
function installed(): string {
  if (scratch) return scratch;
  requireTools('npm', 'tar');
  const work = tempDir('tp-package-');
  const packed = runOk('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], { cwd: ROOT, timeoutMs: 300_000 });
  const tgz = path.join(work, (JSON.parse(packed.stdout) as { filename: string }[])[0]!.filename);
  const proj = path.join(work, 'proj');
  fs.mkdirSync(proj);
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  // The package's dependencies come from this checkout (no network): npm resolves the
  // package's own ranges against them.
  const deps: Record<string, string> = { 'balena-transplant': `file:${tgz}` };
  for (const d of Object.keys(pkg.dependencies)) deps[d] = `file:${path.join(ROOT, 'node_modules', d)}`;
  fs.writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'scratch', version: '1.0.0', private: true, dependencies: deps }, null, 2));
  const r = run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts'], { cwd: proj, timeoutMs: 600_000 });
  assert.equal(r.code, 0, `npm install of the packed tarball failed\n${r.stdout}\n${r.stderr}`);
  const at = path.join(proj, 'node_modules', 'balena-transplant');
  assert.ok(fs.existsSync(path.join(at, 'dist', 'src', 'index.d.ts')), 'installed with its types');
  assert.ok(!fs.existsSync(path.join(at, 'dist', 'test')), 'no tests installed');
  assert.ok(fs.readdirSync(path.join(at, 'build', 'Release')).some((f) => f.endsWith('.node')), 'the install script built the native helper');
  // Sample data to work on: a device's data root as a tarball, that root unpacked, a balenaOS image.
  fs.mkdirSync(path.join(work, 'device'));
  runOk('tar', ['--xattrs', '--xattrs-include=*', '-xzf', path.join(SAMPLE, 'device-docker.tar.gz'), '-C', path.join(work, 'device')]);
  fs.writeFileSync(path.join(work, 'balena.img'), runOk('gzip', ['-dc', path.join(SAMPLE, 'balena-sample.img.gz')], { timeoutMs: 120_000 }).stdoutBytes);
  scratch = proj;
  return proj;
}

/** What every scratch script does, the same in CommonJS and ESM (`t` is the package). */
const SCENARIO = `
const fs = require_fs();
const path = require_path();
const work = path.dirname(process.cwd());
const sample = ${JSON.stringify(SAMPLE)};
const listenersBefore = ['SIGINT', 'SIGTERM', 'SIGHUP', 'uncaughtException', 'unhandledRejection', 'exit'].map((e) => process.listenerCount(e));
const out = {};
const events = [];
const tarball = path.join(sample, 'device-docker.tar.gz');
const device = path.join(work, 'device');
const bundle = path.join(process.cwd(), 'apps.bundle');
fs.rmSync(bundle, { force: true });

out.ls = await t.ls(tarball);
out.extract = await t.extract({ from: device, image: ['sample/hello:2.0'], output: bundle, onProgress: (e) => events.push(e) });
out.events = events.length;
out.lastEvent = events[events.length - 1];
out.lsBundle = await t.ls(bundle);

const rd = path.join(process.cwd(), 'resin-data');
fs.rmSync(rd, { recursive: true, force: true });
fs.mkdirSync(rd);
out.inject = await t.inject(bundle, { resinData: rd, apps: path.join(sample, 'dashboard-state.json') });
out.verify = await t.verify(rd);
out.lsTarget = await t.ls(rd);

const img = path.join(process.cwd(), 'balena.img');
fs.copyFileSync(path.join(work, 'balena.img'), img);
out.preload = await t.preload({ from: tarball, image: ['sample/base:1.0'], disk: img });
out.verifyDisk = await t.verify(img);

// Cancelled before it starts: nothing written.
const rd2 = path.join(process.cwd(), 'resin-data-2');
fs.rmSync(rd2, { recursive: true, force: true });
fs.mkdirSync(rd2);
const codeOf = async (p) => p.then(() => 'resolved', (e) => ({ code: e.code, isTransplantError: e instanceof t.TransplantError, message: e.message }));
out.abortedBefore = await codeOf(t.inject(bundle, { resinData: rd2, signal: AbortSignal.abort() }));
// Cancelled while writing (at the first progress event): what it wrote is undone.
const ac = new AbortController();
out.abortedWriting = await codeOf(t.inject(bundle, { resinData: rd2, signal: ac.signal, onProgress: () => ac.abort() }));
out.rd2After = fs.readdirSync(rd2);
// Typed errors with stable codes.
out.notFound = await codeOf(t.ls(path.join(work, 'no-such-thing')));
out.usage = await codeOf(t.extract({ from: device, image: ['sample/hello:2.0'] }));
out.noImage = await codeOf(t.extract({ from: device, image: ['no/such:image'], output: path.join(process.cwd(), 'x.bundle') }));
out.codes = t.ERROR_CODES;

out.listenersUnchanged = JSON.stringify(listenersBefore) === JSON.stringify(['SIGINT', 'SIGTERM', 'SIGHUP', 'uncaughtException', 'unhandledRejection', 'exit'].map((e) => process.listenerCount(e)));
fs.writeFileSync(path.join(process.cwd(), 'result.json'), JSON.stringify(out));
`;

interface ScenarioResult {
  ls: { images: { id: string; references: string[]; layerCount: number }[]; appsJson: unknown };
  extract: { output: string; imageCount: number; layerCount: number; layers: { chainId: string }[]; bundleSize: number };
  events: number;
  lastEvent: { phase: string; bytes: number; totalBytes: number; layer: string; layerIndex: number; layerCount: number };
  lsBundle: { images: { references: string[] }[] };
  inject: { changed: boolean; copiedLayerCount: number; appsJsonWritten: boolean; images: { id: string }[] };
  verify: { ok: boolean; imageCount: number; layerCount: number; problems: string[] };
  lsTarget: { images: { references: string[] }[]; appsJson: { services: { imageId?: string }[] } | null };
  preload: { changed: boolean; target: string };
  verifyDisk: { ok: boolean; imageCount: number };
  abortedBefore: { code: string; isTransplantError: boolean; message: string };
  abortedWriting: { code: string; isTransplantError: boolean; message: string };
  rd2After: string[];
  notFound: { code: string; isTransplantError: boolean; message: string };
  usage: { code: string; isTransplantError: boolean };
  noImage: { code: string; isTransplantError: boolean };
  codes: string[];
  listenersUnchanged: boolean;
}

function runScenario(proj: string, file: string, content: string, runner: string[]): ScenarioResult {
  fs.writeFileSync(path.join(proj, file), content);
  fs.rmSync(path.join(proj, 'result.json'), { force: true });
  const r = run(process.execPath, [...runner], { cwd: proj, timeoutMs: 300_000 });
  assert.equal(r.code, 0, `${file} failed\n${r.stdout}\n${r.stderr}`);
  assert.equal(r.stdout, '', `${file}: the library wrote nothing to stdout`);
  assert.equal(r.stderr, '', `${file}: the library wrote nothing to stderr`);
  return JSON.parse(fs.readFileSync(path.join(proj, 'result.json'), 'utf8')) as ScenarioResult;
}

function judge(r: ScenarioResult, label: string): void {
  assert.deepEqual(r.ls.images.map((i) => i.references.join(',')).sort(), ['sample/base:1.0', 'sample/hello:2.0,sample/hello:latest'], `${label}: ls of the tarball`);
  assert.equal(r.ls.appsJson, null);
  assert.deepEqual([r.extract.imageCount, r.extract.layerCount, r.extract.layers.length], [1, 2, 2], `${label}: extract`);
  assert.ok(r.extract.bundleSize > 0);
  assert.ok(r.events > 2, `${label}: progress events came`);
  assert.equal(r.lastEvent.phase, 'extract');
  assert.equal(r.lastEvent.bytes, r.lastEvent.totalBytes, `${label}: the last event has every byte of the plan`);
  assert.deepEqual([r.lastEvent.layerIndex, r.lastEvent.layerCount], [1, 2]);
  assert.equal(r.lastEvent.layer, r.extract.layers[1]!.chainId);
  assert.deepEqual(r.lsBundle.images.map((i) => i.references), [['sample/hello:2.0', 'sample/hello:latest']]);
  assert.deepEqual([r.inject.changed, r.inject.copiedLayerCount, r.inject.appsJsonWritten], [true, 2, true], `${label}: inject`);
  assert.deepEqual([r.verify.ok, r.verify.imageCount, r.verify.layerCount, r.verify.problems], [true, 1, 2, []], `${label}: verify of the resin-data`);
  assert.ok(r.lsTarget.appsJson && r.lsTarget.appsJson.services.every((s) => s.imageId), `${label}: every service image of apps.json resolves`);
  assert.equal(r.preload.changed, true);
  assert.deepEqual([r.verifyDisk.ok, r.verifyDisk.imageCount], [true, 1], `${label}: verify of the disk image`);
  assert.deepEqual([r.abortedBefore.code, r.abortedBefore.isTransplantError], ['ABORTED', true], `${label}: an aborted signal rejects with ABORTED`);
  assert.match(r.abortedBefore.message, /^aborted; nothing was changed$/);
  assert.deepEqual([r.abortedWriting.code, r.abortedWriting.isTransplantError], ['ABORTED', true], `${label}: aborted while writing`);
  assert.match(r.abortedWriting.message, /^aborted; what this run had written was undone$/);
  assert.deepEqual(r.rd2After, [], `${label}: what the aborted run wrote was undone`);
  assert.deepEqual([r.notFound.code, r.notFound.isTransplantError], ['NOT_FOUND', true], `${label}: ${r.notFound.message}`);
  assert.deepEqual([r.usage.code, r.noImage.code], ['USAGE', 'IMAGE_NOT_FOUND'], label);
  assert.ok(r.codes.includes('ABORTED') && r.codes.includes('FAILED'));
  assert.equal(r.listenersUnchanged, true, `${label}: no process handlers were installed`);
}

test('the packed tarball installed into a scratch project: the API from CommonJS and from ESM (extract, inject, preload into a disk image, verify, ls; progress events; AbortSignal; error codes)', T, () => {
  const proj = installed();
  const cjs = `'use strict';\nconst t = require('balena-transplant');\nconst require_fs = () => require('node:fs');\nconst require_path = () => require('node:path');\n(async () => {\n${SCENARIO}\n})().catch((e) => { process.exitCode = 1; require('node:fs').writeSync(2, String(e && e.stack)); });\n`;
  judge(runScenario(proj, 'scenario.cjs', cjs, ['scenario.cjs']), 'CommonJS');
  const esm = `import * as t from 'balena-transplant';\nimport { ls, extract, inject, preload, verify, TransplantError } from 'balena-transplant';\nimport * as fsm from 'node:fs';\nimport * as pathm from 'node:path';\nconst require_fs = () => fsm;\nconst require_path = () => pathm;\nif (typeof ls !== 'function' || typeof extract !== 'function' || typeof inject !== 'function' || typeof preload !== 'function' || typeof verify !== 'function' || typeof TransplantError !== 'function') throw new Error('named exports missing');\n${SCENARIO}\n`;
  judge(runScenario(proj, 'scenario.mjs', esm, ['scenario.mjs']), 'ESM');
});

test('the packed tarball from TypeScript: the types check with strict (and reject what is wrong), and the compiled program runs', T, () => {
  const proj = installed();
  const ts = `import { ls, extract, inject, verify, TransplantError, type LsResult, type ExtractResult, type InjectResult, type VerifyResult, type ProgressEvent, type ErrorCode } from 'balena-transplant';
import * as fs from 'node:fs';
import * as path from 'node:path';

async function main(): Promise<void> {
  const work = path.dirname(process.cwd());
  const sample = ${JSON.stringify(SAMPLE)};
  const events: ProgressEvent[] = [];
  const listing: LsResult = await ls(path.join(work, 'device'));
  const layerCounts: number[] = listing.images.map((i) => i.layerCount);
  const bundle = path.join(process.cwd(), 'ts.bundle');
  fs.rmSync(bundle, { force: true });
  const x: ExtractResult = await extract({ from: path.join(sample, 'device-docker.tar.gz'), image: ['sample/base:1.0'], output: bundle, onProgress: (e) => events.push(e) });
  const bytes: number | null = events[0]?.totalBytes ?? null;
  const rd = path.join(process.cwd(), 'ts-resin-data');
  fs.rmSync(rd, { recursive: true, force: true });
  fs.mkdirSync(rd);
  const i: InjectResult = await inject(bundle, { resinData: rd, dryRun: false });
  const v: VerifyResult = await verify(rd, { image: ['sample/base:1.0'] });
  let code: ErrorCode | undefined;
  try {
    await verify(path.join(work, 'nothing-here'));
  } catch (e) {
    if (e instanceof TransplantError) code = e.code;
  }
  // @ts-expect-error: a count is *Count, never a bare noun
  void listing.images[0]?.layers;
  // @ts-expect-error: inject takes a bundle path first
  void (() => inject({ resinData: rd }));
  // @ts-expect-error: a signal is an AbortSignal
  void (() => verify(rd, { signal: 'stop' }));
  fs.writeFileSync(path.join(process.cwd(), 'ts-result.json'), JSON.stringify({ layerCounts, layers: x.layerCount, bytes, copied: i.copiedLayerCount, ok: v.ok, code }));
}
void main();
`;
  fs.writeFileSync(path.join(proj, 'main.ts'), ts);
  fs.writeFileSync(
    path.join(proj, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'Node16', moduleResolution: 'Node16', strict: true, noEmitOnError: true, outDir: 'out', types: ['node'], typeRoots: [path.join(ROOT, 'node_modules', '@types')] },
      files: ['main.ts'],
    }),
  );
  const tsc = run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', proj], { cwd: proj, timeoutMs: 300_000 });
  assert.equal(tsc.code, 0, `tsc --strict on a program using the package failed\n${tsc.stdout}\n${tsc.stderr}`);
  // The types are real (not any): a wrong program is refused.
  fs.writeFileSync(path.join(proj, 'wrong.ts'), `import { ls } from 'balena-transplant';\nvoid ls('x').then((r) => r.images[0]?.layers.toFixed());\n`);
  const wrong = run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--module', 'Node16', '--moduleResolution', 'Node16', '--types', 'node', '--typeRoots', path.join(ROOT, 'node_modules', '@types'), 'wrong.ts'], { cwd: proj, timeoutMs: 300_000 });
  assert.notEqual(wrong.code, 0, 'tsc accepts a property the result does not have');
  assert.match(wrong.stdout, /Property 'layers' does not exist/);
  const r = run(process.execPath, ['out/main.js'], { cwd: proj, timeoutMs: 300_000 });
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  assert.equal(r.stdout + r.stderr, '');
  const res = JSON.parse(fs.readFileSync(path.join(proj, 'ts-result.json'), 'utf8')) as { layerCounts: number[]; layers: number; bytes: number | null; copied: number; ok: boolean; code: string };
  assert.deepEqual(res.layerCounts.sort(), [1, 2]);
  assert.deepEqual([res.layers, res.copied, res.ok, res.code], [1, 1, true, 'NOT_FOUND']);
  assert.ok((res.bytes ?? 0) > 0, 'progress events carry the plan total');
});
