/**
 * Messages a new user meets (issue 12, "Interface"): an unreadable data root says
 * "permission denied: run as root" (not "does not hold an engine data root", never a raw
 * EACCES/ENOENT or an internal /proc/self/fd path); an ID prefix shorter than 12 says so;
 * counts in messages agree with their nouns ("1 image", "2 layers").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, run, runOk, requireTools, type RunResult } from './harness/exec.js';
import { tempDir } from './harness/fixtures.js';
import { transplant, show } from './harness/cli.js';

const T = { timeout: 300_000 };
const SAMPLE = path.join(repoRoot(), 'sample');
const TARBALL = path.join(SAMPLE, 'device-docker.tar.gz');

function oneLine(r: RunResult, code: number, what: string): string {
  assert.equal(r.code, code, `${what}\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: one line\n${r.stderr}`);
  assert.doesNotMatch(lines[0]!, /EACCES|ENOENT|EPERM|\/proc\/self\/fd|does not hold an engine data root/, `${what}: ${lines[0]}`);
  return lines[0]!;
}

test('an unreadable data root says "permission denied: run as root" in ls, verify and extract; missing paths say so without errno text', T, () => {
  requireTools('tar');
  const work = tempDir('tp-iface-');
  fs.chmodSync(work, 0o755);
  const device = path.join(work, 'device');
  fs.mkdirSync(device, { mode: 0o755 });
  runOk('tar', ['--xattrs', '--xattrs-include=*', '-xzf', TARBALL, '-C', device]);
  // As on a device: /var/lib/docker is readable by root only.
  fs.chmodSync(path.join(device, 'var', 'lib', 'docker'), 0o700);
  const root = path.join(device, 'var', 'lib', 'docker');
  for (const [args, target] of [
    [['ls', root], root],
    [['ls', device], device],
    [['verify', root], root],
    [['extract', '--from', root, '--image', 'sample/base:1.0', '--output', path.join(work, 'x.bundle')], root],
  ] as const) {
    const r = transplant([...args], { asUser: true });
    const line = oneLine(r, args[0] === 'verify' ? 2 : 1, args.join(' '));
    assert.match(line, /^error: .*permission denied: run as root|needs root.*run as root/, `${args.join(' ')}: ${line}`);
    if (args[0] !== 'extract') assert.ok(line.includes(target), `${args.join(' ')} names ${target}: ${line}`);
  }
  const missing = path.join(work, 'nothing-here');
  for (const args of [['ls', missing], ['verify', missing], ['inject', TARBALL, '--resin-data', missing], ['extract', '--from', missing, '--image', 'a:1', '-o', path.join(work, 'y.bundle')]]) {
    const r = transplant(args);
    const line = oneLine(r, args[0] === 'verify' ? 2 : 1, args.join(' '));
    assert.match(line, /no such (file or )?directory/, line);
  }
});

test('an image ID prefix shorter than 12 hex digits says so; 12 digits select the image', T, () => {
  const list = JSON.parse(transplant(['ls', TARBALL, '--json']).stdout) as { images: { id: string; references: string[] }[] };
  const id = list.images.find((i) => i.references.includes('sample/base:1.0'))!.id.slice(7);
  const short = transplant(['extract', '--from', TARBALL, '--image', id.slice(0, 8), '--dry-run']);
  assert.match(oneLine(short, 1, 'short prefix'), /image ID prefix [0-9a-f]{8} is too short: give at least 12 hex digits/);
  const ok = transplant(['extract', '--from', TARBALL, '--image', id.slice(0, 12), '--dry-run']);
  assert.equal(ok.code, 0, show(ok));
  assert.match(ok.stdout, /\(1 layer\)/, 'one layer, singular');
});

test('messages count in words: "1 image", "2 layers"', T, () => {
  const work = tempDir('tp-iface-');
  const bundle = path.join(work, 'a.bundle');
  const x = transplant(['extract', '--from', TARBALL, '--image', 'sample/hello:2.0', '--output', bundle]);
  assert.equal(x.code, 0, show(x));
  assert.match(x.stdout, /: 1 image, 2 layers, /, x.stdout);
  const rd = path.join(work, 'rd');
  fs.mkdirSync(rd);
  const i = transplant(['inject', bundle, '--resin-data', rd]);
  assert.equal(i.code, 0, show(i));
  assert.match(i.stdout, /^injected 1 image into .*: 2 layers copied, 0 reused, 2 references added$/m, i.stdout);
  const v = transplant(['verify', rd]);
  assert.match(v.stdout, /: 1 image, 2 layers checked: OK$/m, v.stdout);
  assert.doesNotMatch(x.stdout + i.stdout + v.stdout, /\b1 (images|layers|files|references)\b|\(s\)/);
});

test('every command\'s --help has examples and fits in 80 columns', T, () => {
  for (const c of ['extract', 'inject', 'preload', 'ls', 'verify']) {
    const r = transplant([c, '--help']);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /\nExamples:\n( {2}#[^\n]*\n)? {2}transplant /, `${c} --help has examples`);
    const wide = r.stdout.split('\n').filter((l) => l.length > 80);
    assert.deepEqual(wide, [], `${c} --help: lines over 80 columns`);
  }
});

test('--progress plain prints progress lines for logs (the default on a pipe, with copy, growth and verify), tty redraws one line on a terminal, none and --quiet print nothing; a bad mode is bad usage', T, () => {
  requireTools('script');
  const work = tempDir('tp-iface-');
  const args = (mode: string[]): string[] => ['extract', '--from', TARBALL, '--image', 'sample/hello:2.0', '-o', path.join(work, 'p.bundle'), ...mode];
  const plain = transplant(args(['--progress', 'plain']));
  assert.equal(plain.code, 0, show(plain));
  const lines = plain.stderr.split('\n').filter((l) => l !== '');
  assert.ok(lines.length >= 2, `a line per layer at least\n${plain.stderr}`);
  assert.ok(lines.every((l) => /^extract layer \d\/2 [0-9a-f]{12}: \S+ B of 112 B \(\d+%\)/.test(l)), plain.stderr);
  assert.match(lines[lines.length - 1]!, /112 B of 112 B \(100%\)/);
  assert.doesNotMatch(plain.stderr, /\r|\x1b/, 'no terminal control in plain mode');
  // Into a disk image: the work copy is reported too (a copy of data ranges; /tmp does not reflink).
  const img = path.join(work, 'balena.img');
  fs.writeFileSync(img, runOk('gzip', ['-dc', path.join(SAMPLE, 'balena-sample.img.gz')], { timeoutMs: 120_000 }).stdoutBytes);
  const disk = transplant(['inject', path.join(work, 'p.bundle'), '--disk', img, '--output', path.join(work, 'out.img'), '--additional-space', String(64 << 20), '--progress', 'plain']);
  assert.equal(disk.code, 0, show(disk));
  assert.match(disk.stdout, /the image grew by/, disk.stdout);
  assert.match(disk.stderr, /^copying the disk image: \S+ [kMG]?B of \S+ [kMG]?B \(100%\)/m, disk.stderr);
  assert.match(disk.stderr, /^growing resin-data: \S+ [kMG]?B of \S+ [kMG]?B \(100%\)/m, disk.stderr);
  assert.match(disk.stderr, /^inject layer 2\/2 [0-9a-f]{12}: 112 B of 112 B \(100%\), 15 files/m, disk.stderr);
  assert.match(disk.stdout, /^injected 1 image into /, disk.stdout);
  // verify goes layer by layer, in a bundle and in a disk image.
  const vb = transplant(['verify', path.join(work, 'p.bundle'), '--progress', 'plain']);
  assert.equal(vb.code, 0, show(vb));
  assert.match(vb.stderr, /^verify layer 2\/2 [0-9a-f]{12}: 112 B of 112 B \(100%\)/m, vb.stderr);
  const vd = transplant(['verify', path.join(work, 'out.img'), '--progress', 'plain']);
  assert.equal(vd.code, 0, show(vd));
  assert.match(vd.stderr, /^verify layer \d+\/\d+ [0-9a-f]{12}: \S+ [kMG]?B of \S+ [kMG]?B \(100%\)/m, vd.stderr);
  // auto, the default, on a pipe (a CI log): plain lines, as buildx does; none with --json,
  // whose stderr carries only a JSON error. TRANSPLANT_PROGRESS sets the default.
  const noEnv = { env: { TRANSPLANT_PROGRESS: '' } };
  const auto = transplant(args([]), noEnv);
  assert.equal(auto.code, 0, show(auto));
  assert.match(auto.stderr, /^extract layer 2\/2 [0-9a-f]{12}: 112 B of 112 B \(100%\)/m, 'auto on a pipe prints plain lines');
  assert.doesNotMatch(auto.stderr, /\r|\x1b/, 'no terminal control on a pipe');
  const autoJson = transplant(args(['--json']), noEnv);
  assert.equal(autoJson.code, 0, show(autoJson));
  assert.equal(autoJson.stderr, '', 'auto with --json prints no progress');
  assert.equal(transplant(args([]), { env: { TRANSPLANT_PROGRESS: 'none' } }).stderr, '', 'TRANSPLANT_PROGRESS=none');
  assert.match(transplant(args(['--json']), { env: { TRANSPLANT_PROGRESS: 'plain' } }).stderr, /^extract layer 1\/2 /m, 'TRANSPLANT_PROGRESS=plain, even with --json');
  const badEnv = transplant(args([]), { env: { TRANSPLANT_PROGRESS: 'fancy' } });
  assert.equal(badEnv.code, 2, show(badEnv));
  assert.match(badEnv.stderr, /TRANSPLANT_PROGRESS=fancy: give one of auto, tty, plain, none/);
  for (const quiet of [['--quiet'], ['-q'], ['--progress', 'none', '-q']]) {
    const q = transplant(args(quiet));
    assert.equal(q.code, 0, show(q));
    assert.equal(q.stdout + q.stderr, '', `${quiet.join(' ')} prints nothing`);
  }
  const qj = transplant(args(['--quiet', '--json']));
  assert.equal((JSON.parse(qj.stdout) as { imageCount: number }).imageCount, 1, '--json output is still printed with --quiet');
  const bad = transplant(args(['--progress', 'fancy']));
  assert.equal(bad.code, 2, show(bad));
  assert.match(bad.stderr, /--progress fancy: give one of auto, tty, plain, none/);
  // On a terminal (script(1) gives one): one line redrawn in place, ending at 100%.
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  const tty = runOk('script', ['-qec', [process.execPath, cli, ...args([])].map((a) => `'${a}'`).join(' '), '/dev/null'], { timeoutMs: 120_000, env: { TRANSPLANT_PROGRESS: '' } });
  assert.match(tty.stdout, /\r\x1b\[Kextract layer 1\/2 /, tty.stdout);
  assert.match(tty.stdout, /\r\x1b\[Kextract layer 2\/2 [0-9a-f]{12}: 112 B of 112 B \(100%\)[^\n]*\r?\n/, tty.stdout);
});

test('a bundle is never written to a terminal nor read from one (as docker save and load refuse): bad usage, nothing written', T, () => {
  requireTools('script');
  const cli = path.join(repoRoot(), 'bin', 'transplant');
  const onTerminal = (args: string[]): string =>
    run('script', ['-qec', [process.execPath, cli, ...args].map((a) => `'${a}'`).join(' '), '/dev/null'], { timeoutMs: 120_000 }).stdout;
  const out = onTerminal(['extract', '--from', TARBALL, '--image', 'sample/hello:2.0', '--output', '-']);
  assert.match(out, /error: refusing to write a bundle to a terminal/, out);
  assert.ok(out.length < 2000, 'no bundle bytes on the terminal');
  for (const args of [['inject', '-', '--engine-root', '/nonexistent'], ['ls', '-'], ['extract', '--from', '-', '--image', 'a:1', '-o', '/nonexistent/x'], ['preload', '--from', '-', '--image', 'a:1', '--engine-root', '/nonexistent']]) {
    const o = onTerminal(args);
    assert.match(o, /error: refusing to read from a terminal/, `${args.join(' ')}: ${o}`);
  }
});
