/**
 * `--json` (issue 12, "Interface"): every command's real output, in every mode it has (dry
 * run, written, unchanged, a store that does not hold, errors), validated against its JSON
 * Schema in schemas/ with ajv; across all of them the same key has the same type, `images`
 * and `layers` are arrays of objects, and every count is named `*Count`. Errors in --json mode
 * are one JSON object on stderr with a stable code; verify exits 1 for a store that does not
 * hold and 2 when it could not run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Ajv from 'ajv';
import { repoRoot, runOk } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { transplant, show } from './harness/cli.js';
import { ERROR_CODES } from '../src/errors.js';

const T = { timeout: 600_000 };
const ROOT = repoRoot();
const SAMPLE = path.join(ROOT, 'sample');
const TARBALL = path.join(SAMPLE, 'device-docker.tar.gz');
const APPS = path.join(SAMPLE, 'dashboard-state.json');

type Command = 'ls' | 'extract' | 'inject' | 'preload' | 'verify' | 'error';

function validators(): Record<Command, (value: unknown) => string[]> {
  const ajv = new Ajv({ strict: true, allErrors: true });
  const out = {} as Record<Command, (value: unknown) => string[]>;
  for (const c of ['ls', 'extract', 'inject', 'preload', 'verify', 'error'] as const) {
    const validate = ajv.compile(JSON.parse(fs.readFileSync(path.join(ROOT, 'schemas', `${c}.schema.json`), 'utf8')) as object);
    out[c] = (value) => (validate(value) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''} ${JSON.stringify(e.params)}`));
  }
  return out;
}

/** Measures that are not counts of things (bytes, sizes, an exit status). */
/** Numbers that measure rather than count: sizes (any key ending in Bytes too) and the exit code. */
const MEASURES = new Set(['size', 'bytes', 'bundleSize', 'exitCode']);

/** Every key's JSON types, with the path it was seen at, for the cross-command checks. */
function collectKeys(value: unknown, at: string, into: Map<string, Map<string, string>>): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => collectKeys(v, `${at}[${i}]`, into));
    return;
  }
  if (value === null || typeof value !== 'object') return;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const type = v === null ? 'null' : Array.isArray(v) ? `array<${[...new Set(v.map((x) => (x === null ? 'null' : Array.isArray(x) ? 'array' : typeof x)))].join('|') || 'empty'}>` : typeof v;
    if (!into.has(k)) into.set(k, new Map());
    into.get(k)!.set(type, `${at}.${k}`);
    collectKeys(v, `${at}.${k}`, into);
  }
}

test('every command\'s --json output matches its schema; one type per key everywhere; images and layers arrays of objects; counts named *Count; errors as JSON on stderr with stable codes; verify exits 1 (store does not hold) or 2 (could not run)', T, () => {
  const validate = validators();
  const work = tempDir('tp-json-');
  const outputs: { what: string; command: Command; value: unknown }[] = [];
  const json = (command: Exclude<Command, 'error'>, args: string[], what: string, expectCode = 0): unknown => {
    const r = transplant([command, ...args, '--json']);
    assert.equal(r.code, expectCode, `${what}\n${show(r)}`);
    const value = JSON.parse(r.stdout) as unknown;
    outputs.push({ what, command, value });
    return value;
  };
  const failing = (args: string[], what: string, exitCode: number, code: string): void => {
    const r = transplant([...args, '--json']);
    assert.equal(r.code, exitCode, `${what}\n${show(r)}`);
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('warning: '));
    assert.equal(lines.length, 1, `${what}: one JSON line on stderr\n${show(r)}`);
    const value = JSON.parse(lines[0]!) as { error: { code: string; exitCode: number } };
    outputs.push({ what, command: 'error', value });
    assert.equal(value.error.code, code, `${what}: code\n${show(r)}`);
    assert.equal(value.error.exitCode, exitCode, `${what}: exitCode`);
  };

  // Sources and targets made from the sample data: an engine root (unpacked as root with its
  // xattrs), a bundle, a resin-data with apps.json, a balenaOS disk image.
  const device = path.join(work, 'device');
  fs.mkdirSync(device);
  runOk('tar', ['--xattrs', '--xattrs-include=*', '-xzf', TARBALL, '-C', device]);
  const img = path.join(work, 'balena.img');
  fs.writeFileSync(img, runOk('gzip', ['-dc', path.join(SAMPLE, 'balena-sample.img.gz')], { timeoutMs: 120_000 }).stdoutBytes);
  const bundle = path.join(work, 'apps.bundle');
  const rd = path.join(work, 'resin-data');
  fs.mkdirSync(rd);

  json('ls', [TARBALL], 'ls of a data-root tarball');
  json('ls', [device], 'ls of an engine root');
  json('extract', ['--from', device, '--image', 'sample/hello:2.0', '--dry-run'], 'extract --dry-run');
  json('extract', ['--from', TARBALL, '--apps', APPS, '--output', bundle], 'extract');
  json('ls', [bundle], 'ls of a bundle');
  json('verify', [bundle], 'verify of a bundle');
  json('inject', [bundle, '--resin-data', rd, '--dry-run'], 'inject --dry-run');
  json('inject', [bundle, '--resin-data', rd, '--apps', APPS], 'inject');
  json('inject', [bundle, '--resin-data', rd], 'inject again (unchanged)');
  json('ls', [rd], 'ls of a resin-data with apps.json');
  json('verify', [rd], 'verify of a resin-data');
  json('preload', ['--from', TARBALL, '--apps', APPS, '--disk', img, '--dry-run'], 'preload --dry-run into a disk image');
  json('preload', ['--from', TARBALL, '--image', 'sample/base:1.0', '--apps', APPS, '--disk', img, '--static-ip', '10.0.0.2/24'], 'preload into a disk image');
  json('ls', [img], 'ls of a disk image');
  json('verify', [img], 'verify of a disk image');

  // A store that does not hold: one byte of one layer file changed. verify prints its report
  // (exit 1) and the error object on stderr.
  const overlay = path.join(rd, 'docker', 'overlay2');
  const victim = fs
    .readdirSync(overlay)
    .map((d) => path.join(overlay, d, 'diff', 'app', 'hello.sh'))
    .find((p) => fs.existsSync(p));
  assert.ok(victim, 'a layer file to damage');
  fs.appendFileSync(victim, 'x');
  const bad = transplant(['verify', rd, '--json']);
  assert.equal(bad.code, 1, `verify of a damaged store exits 1\n${show(bad)}`);
  const report = JSON.parse(bad.stdout) as { ok: boolean; problems: string[] };
  assert.equal(report.ok, false);
  assert.ok(report.problems.length > 0);
  outputs.push({ what: 'verify of a damaged store', command: 'verify', value: report });
  const badErr = JSON.parse(bad.stderr.trim()) as { error: { code: string } };
  assert.equal(badErr.error.code, 'VERIFY_FAILED');
  outputs.push({ what: 'verify of a damaged store (stderr)', command: 'error', value: badErr });

  failing(['verify', path.join(work, 'nothing-here')], 'verify of a path that does not exist: could not run', 2, 'NOT_FOUND');
  failing(['inject', bundle], 'inject without a target: usage', 2, 'USAGE');
  failing(['extract', '--from', device, '--image', 'no/such:image', '--output', path.join(work, 'x.bundle')], 'extract of an image the source does not hold', 1, 'IMAGE_NOT_FOUND');
  failing(['ls', path.join(work, 'nothing-here')], 'ls of a path that does not exist', 1, 'NOT_FOUND');

  const problems: string[] = [];
  for (const o of outputs) for (const p of validate[o.command](o.value)) problems.push(`${o.what}: ${o.command}.schema.json: ${p}`);
  // Across every output: one type per key (null allowed beside it: absent), images/layers arrays of objects, counts *Count.
  const keys = new Map<string, Map<string, string>>();
  for (const o of outputs) collectKeys(o.value, o.what, keys);
  for (const [k, types] of keys) {
    const real = [...types.keys()].filter((t) => t !== 'null' && t !== 'array<empty>');
    const kinds = new Set(real.map((t) => t.replace(/<.*>/, '')));
    if (kinds.size > 1) problems.push(`key ${k} has several types: ${[...types].map(([t, at]) => `${t} at ${at}`).join(', ')}`);
    if ((k === 'images' || k === 'layers') && real.some((t) => t !== 'array<object>')) problems.push(`${k} is not always an array of objects: ${[...types].map(([t, at]) => `${t} at ${at}`).join(', ')}`);
    if (kinds.has('number') && !k.endsWith('Count') && !k.endsWith('Bytes') && !MEASURES.has(k)) problems.push(`${k} is a number but not named *Count (at ${[...types.values()][0]})`);
  }
  assert.deepEqual(problems, [], problems.join('\n'));

  // The codes the schema allows are the library's.
  const errorSchema = JSON.parse(fs.readFileSync(path.join(ROOT, 'schemas', 'error.schema.json'), 'utf8')) as { properties: { error: { properties: { code: { enum: string[] } } } } };
  assert.deepEqual(errorSchema.properties.error.properties.code.enum, [...ERROR_CODES]);
});
