/**
 * A live device over SSH: a real OpenSSH server on 127.0.0.1 (its own config, host key and
 * authorized keys, PermitRootLogin prohibit-password) serves the source fixture's engine
 * root. The bundle extracted over SSH must equal, attribute for attribute, the one extracted
 * from the directory, and the device must be left exactly as it was — also when the device's
 * tar is busybox's, as on balenaOS (times then come from coreutils stat, xattrs from the
 * tar-split). Also: the ssh-agent instead of --identity, hashed known_hosts entries, unknown
 * and changed host keys, a login the server refuses, paths that are no engine root, and a
 * device with neither GNU tar nor coreutils' stat.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { repoRoot, requireTools, run, runOk, type RunResult } from './harness/exec.js';
import { getFixtures, tempDir, type Fixtures } from './harness/fixtures.js';
import { compareBundles, describeBundle, type BundleDescription } from './harness/bundle-digest.js';
import { treeDigest } from './harness/judge.js';
import { checkHostKey, hostFieldMatches, hostKeyAlgorithms, knownHostEntries, parseDeviceUrl } from '../src/sources/ssh-device.js';

const T = { timeout: 600_000 };
const SSHD = '/usr/sbin/sshd';

interface Server {
  fx: Fixtures;
  work: string;
  port: number;
  url: string;
  /** The server's ECDSA host key line (`type base64`). */
  ecdsaHostPub: string;
  /** A HOME whose .ssh/known_hosts holds the server's key, hashed. */
  home: string;
  key: string;
  busyboxKey: string;
  bareBusyboxKey: string;
  cutKey: string;
  strangerKey: string;
  imageArgs: string[];
  reference: BundleDescription;
  digestBefore: string;
}

const started: ChildProcess[] = [];
after(() => {
  for (const c of started) if (c.exitCode === null) c.kill('SIGTERM');
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Starts a program in the background and waits for a line matching `ready` on its stderr. */
function startDaemon(cmd: string, args: string[], ready: RegExp, env?: Record<string, string>): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    started.push(child);
    let log = '';
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start in 20 s: ${log}`)), 20_000);
    const onData = (d: Buffer): void => {
      log += d.toString('utf8');
      if (ready.test(log)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stderr?.on('data', onData);
    child.stdout?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${String(code)}) before it was ready: ${log}`));
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${cmd}: ${e.message}`));
    });
  });
}

function transplant(args: string[], env: Record<string, string>): RunResult {
  return run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), ...args], { timeoutMs: 300_000, env });
}

function show(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(0, 3000)}`;
}

function assertOneLineError(r: RunResult, what: string, pattern: RegExp): void {
  assert.equal(r.code, 1, `${what}: exit code 1 expected\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: one line on stderr expected\n${show(r)}`);
  assert.match(lines[0] as string, /^error: \S/, `${what}: the line starts with "error: "\n${show(r)}`);
  assert.match(lines[0] as string, pattern, `${what}: the message\n${show(r)}`);
}

let server: Promise<Server> | undefined;

function getServer(): Promise<Server> {
  server ??= (async () => {
    requireTools(SSHD, 'ssh-keygen', 'ssh-agent', 'ssh-add', '/bin/busybox');
    const fx = await getFixtures();
    const work = tempDir('tpssh-');
    const key = (name: string): string => {
      const f = path.join(work, name);
      runOk('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', f]);
      return f;
    };
    const hostKey = key('host_key');
    // A second host key, as devices have several: ECDSA.
    const ecdsaHostKey = path.join(work, 'host_key_ecdsa');
    runOk('ssh-keygen', ['-q', '-t', 'ecdsa', '-b', '256', '-N', '', '-f', ecdsaHostKey]);
    const clientKey = key('client_key');
    const busyboxKey = key('busybox_key');
    const bareBusyboxKey = key('bare_busybox_key');
    const cutKey = key('cut_key');
    const strangerKey = key('stranger_key');
    // A "device" whose tar is busybox's, as on balenaOS (which has coreutils' stat); and
    // one with busybox's stat too: the logins with these keys get them first in PATH.
    const bb = path.join(work, 'busybox-bin');
    fs.mkdirSync(bb);
    fs.symlinkSync('/bin/busybox', path.join(bb, 'tar'));
    const bbAll = path.join(work, 'busybox-all-bin');
    fs.mkdirSync(bbAll);
    for (const tool of ['tar', 'stat', 'find']) fs.symlinkSync('/bin/busybox', path.join(bbAll, tool));
    // And one whose tar stream is cut short (a connection or a device failing mid-layer).
    const cut = path.join(work, 'cut-bin');
    fs.mkdirSync(cut);
    fs.writeFileSync(path.join(cut, 'tar'), '#!/bin/sh\n/bin/tar "$@" | head -c 300000\n', { mode: 0o755 });
    const authorized = path.join(work, 'authorized_keys');
    fs.writeFileSync(
      authorized,
      `${fs.readFileSync(`${clientKey}.pub`, 'utf8').trim()}\n` +
        `environment="PATH=${bb}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" ${fs.readFileSync(`${busyboxKey}.pub`, 'utf8').trim()}\n` +
        `environment="PATH=${bbAll}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" ${fs.readFileSync(`${bareBusyboxKey}.pub`, 'utf8').trim()}\n` +
        `environment="PATH=${cut}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" ${fs.readFileSync(`${cutKey}.pub`, 'utf8').trim()}\n`,
      { mode: 0o600 },
    );
    const port = await freePort();
    const config = path.join(work, 'sshd_config');
    fs.writeFileSync(
      config,
      [
        'ListenAddress 127.0.0.1',
        `HostKey ${hostKey}`,
        `HostKey ${ecdsaHostKey}`,
        `AuthorizedKeysFile ${authorized}`,
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'PermitUserEnvironment PATH',
        `PidFile ${path.join(work, 'sshd.pid')}`,
        '',
      ].join('\n'),
    );
    // sshd's privilege separation directory (the Debian service creates it at start).
    fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    await startDaemon(SSHD, ['-D', '-e', '-f', config, '-p', String(port)], /Server listening/);

    const home = path.join(work, 'home');
    fs.mkdirSync(path.join(home, '.ssh'), { recursive: true, mode: 0o700 });
    const knownHosts = path.join(home, '.ssh', 'known_hosts');
    const hostPub = fs.readFileSync(`${hostKey}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
    fs.writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostPub}\n`);
    runOk('ssh-keygen', ['-q', '-H', '-f', knownHosts]); // hashed, as Debian's ssh writes it (HashKnownHosts yes)
    assert.match(fs.readFileSync(knownHosts, 'utf8'), /^\|1\|/, 'known_hosts entry is hashed');

    const imageArgs = ['--image', 'fixture/app-c:2', '--image', 'fixture/app-b:latest', '--image', fx.images.appD.id];
    const refBundle = path.join(work, 'from-directory.bundle');
    const r = run(process.execPath, [path.join(repoRoot(), 'bin', 'transplant'), 'extract', '--from', fx.sourceRoot, ...imageArgs, '--output', refBundle], { timeoutMs: 300_000 });
    assert.equal(r.code, 0, `extract from the directory failed\n${show(r)}`);
    return {
      fx,
      work,
      port,
      url: `ssh://root@127.0.0.1:${port}${fx.sourceRoot}`,
      ecdsaHostPub: fs.readFileSync(`${ecdsaHostKey}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' '),
      home,
      key: clientKey,
      busyboxKey,
      bareBusyboxKey,
      cutKey,
      strangerKey,
      imageArgs,
      reference: await describeBundle(refBundle, { bytes: true }),
      digestBefore: treeDigest(fx.sourceRoot),
    };
  })();
  return server;
}

const env = (s: Server, extra: Record<string, string> = {}): Record<string, string> => ({ HOME: s.home, SSH_AUTH_SOCK: '', ...extra });

test('ssh: the bundle extracted from a device over SSH equals the one from the directory; nothing on the device changes', T, async () => {
  const s = await getServer();
  const bundle = path.join(s.work, 'over-ssh.bundle');
  const r = transplant(['extract', '--from', s.url, '--identity', s.key, ...s.imageArgs, '--output', bundle], env(s));
  assert.equal(r.code, 0, `extract over ssh failed\n${show(r)}`);
  const got = await describeBundle(bundle, { bytes: true });
  assert.ok(got.entries.size > 300, `the bundle holds only ${got.entries.size} layer entries`);
  assert.deepEqual(compareBundles(s.reference, got, ['directory', 'ssh']).slice(0, 30), [], 'the bundle made over ssh differs from the one made from the directory');
  assert.equal(treeDigest(s.fx.sourceRoot), s.digestBefore, 'the device\'s engine root changed');
});

test('ssh: the ssh-agent logs in when no --identity is given; the dry run counts layers as the directory does; ls lists the device', T, async () => {
  const s = await getServer();
  const sock = path.join(s.work, 'agent.sock');
  await startDaemon('ssh-agent', ['-D', '-a', sock], /SSH_AUTH_SOCK/);
  runOk('ssh-add', ['-q', s.key], { env: { SSH_AUTH_SOCK: sock } });
  const r = transplant(['extract', '--from', s.url, ...s.imageArgs, '--dry-run', '--json'], env(s, { SSH_AUTH_SOCK: sock }));
  assert.equal(r.code, 0, `extract --dry-run with the agent failed\n${show(r)}`);
  const manifest = JSON.parse(r.stdout) as { layers: { chainId: string; fileCount: number; bytes: number }[] };
  const expected = s.reference.layers.map((l) => JSON.parse(l) as { chainId: string; entries: number; bytes: number });
  assert.deepEqual(
    manifest.layers.map((l) => `${l.chainId} ${l.fileCount} ${l.bytes}`).sort(),
    expected.map((l) => `${l.chainId} ${l.entries} ${l.bytes}`).sort(),
    'layers, entry and byte counts as the directory gives them',
  );
  // ls takes a device too (with the agent's key).
  const ls = transplant(['ls', s.url, '--json'], env(s, { SSH_AUTH_SOCK: sock }));
  assert.equal(ls.code, 0, `ls over ssh failed\n${show(ls)}`);
  const listed = (JSON.parse(ls.stdout) as { images: { id: string; references: string[] }[] }).images;
  for (const img of Object.values(s.fx.images)) {
    const e = listed.find((x) => x.id === img.id);
    assert.ok(e, `ls over ssh lists ${img.key}`);
    assert.deepEqual([...e.references].sort(), [...img.refs].sort(), `references of ${img.key}`);
  }
});

test('ssh: unknown or changed host keys, a refused login, wrong paths, a device without GNU tools and a stream cut short fail with one line', T, async () => {
  const s = await getServer();
  const dry = ['--dry-run', ...s.imageArgs];
  // Unknown host: an empty known_hosts.
  const emptyHome = path.join(s.work, 'empty-home');
  fs.mkdirSync(path.join(emptyHome, '.ssh'), { recursive: true });
  fs.writeFileSync(path.join(emptyHome, '.ssh', 'known_hosts'), '');
  let r = transplant(['extract', '--from', s.url, '--identity', s.key, ...dry], env(s, { HOME: emptyHome }));
  assertOneLineError(r, 'unknown host key', /not in .*known_hosts.*--insecure-host-key/);
  r = transplant(['extract', '--from', s.url, '--identity', s.key, '--insecure-host-key', ...dry], env(s, { HOME: emptyHome }));
  assert.equal(r.code, 0, `--insecure-host-key connects to an unknown host\n${show(r)}`);
  // Known by its ECDSA key only, under a wildcard pattern: that key is asked for, and accepted.
  const ecdsaHome = path.join(s.work, 'ecdsa-home');
  fs.mkdirSync(path.join(ecdsaHome, '.ssh'), { recursive: true });
  fs.writeFileSync(path.join(ecdsaHome, '.ssh', 'known_hosts'), `# a comment\n[127.0.0.?]:${s.port},!other ${s.ecdsaHostPub}\n`);
  r = transplant(['extract', '--from', s.url, '--identity', s.key, ...dry], env(s, { HOME: ecdsaHome }));
  assert.equal(r.code, 0, `a host known by its ECDSA key under a wildcard pattern\n${show(r)}`);
  // Changed host key: known_hosts names another key of the same type for this host.
  const otherHome = path.join(s.work, 'other-home');
  fs.mkdirSync(path.join(otherHome, '.ssh'), { recursive: true });
  const otherPub = fs.readFileSync(`${s.strangerKey}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
  fs.writeFileSync(path.join(otherHome, '.ssh', 'known_hosts'), `[127.0.0.1]:${s.port} ${otherPub}\n`);
  r = transplant(['extract', '--from', s.url, '--identity', s.key, ...dry], env(s, { HOME: otherHome }));
  assertOneLineError(r, 'changed host key', /does NOT match/);
  // A key the server does not accept.
  r = transplant(['extract', '--from', s.url, '--identity', s.strangerKey, ...dry], env(s));
  assertOneLineError(r, 'refused login', /refused the login/);
  // Not an engine root, and no such directory.
  r = transplant(['extract', '--from', `ssh://root@127.0.0.1:${s.port}${s.work}`, '--identity', s.key, ...dry], env(s));
  assertOneLineError(r, 'not an engine root', /is not an engine data root/);
  r = transplant(['extract', '--from', `ssh://127.0.0.1:${s.port}/no/such/dir`, '--identity', s.key, ...dry], env(s));
  assertOneLineError(r, 'no such directory', /does not exist on the device/);
  // Nobody listening.
  const closed = await freePort();
  r = transplant(['extract', '--from', `ssh://127.0.0.1:${closed}`, '--identity', s.key, ...dry], env(s));
  assertOneLineError(r, 'connection refused', /connection refused/);
  // A device with neither GNU tar nor coreutils' stat is refused before anything is written.
  const out = path.join(s.work, 'bare-busybox.bundle');
  r = transplant(['extract', '--from', s.url, '--identity', s.bareBusyboxKey, ...s.imageArgs, '--output', out], env(s));
  assertOneLineError(r, 'busybox tar and busybox stat on the device', /neither GNU tar nor GNU coreutils/);
  assert.ok(!fs.existsSync(out), 'no bundle is written');
  // A layer's tar stream cut short: one line, and no bundle (not even a partial one) is left.
  const cutDir = path.join(s.work, 'cut-out');
  fs.mkdirSync(cutDir);
  r = transplant(['extract', '--from', s.url, '--identity', s.cutKey, ...s.imageArgs, '--output', path.join(cutDir, 'cut.bundle')], env(s));
  assertOneLineError(r, 'a tar stream cut short', /reading layer [0-9a-f]{12} from the device failed \(.*(end|truncated)/);
  assert.deepEqual(fs.readdirSync(cutDir), [], 'nothing is left where the bundle was to be written');
});

test('ssh: a device with busybox tar (balenaOS) gives the same bundle, times from coreutils stat, xattrs from the tar-split', T, async () => {
  const s = await getServer();
  const bundle = path.join(s.work, 'busybox-device.bundle');
  const r = transplant(['extract', '--from', s.url, '--identity', s.busyboxKey, ...s.imageArgs, '--output', bundle], env(s));
  assert.equal(r.code, 0, `extract from a busybox-tar device failed\n${show(r)}`);
  const got = await describeBundle(bundle, { bytes: true });
  const diffs = compareBundles(s.reference, got, ['directory', 'busybox device']);
  assert.deepEqual(diffs.slice(0, 30), [], 'the bundle made with busybox tar differs from the one made from the directory');
});

test('ssh: addresses and known_hosts rules', () => {
  assert.deepEqual(parseDeviceUrl('ssh://10.0.0.5'), { user: 'root', host: '10.0.0.5', port: 22222, engineRoot: '/var/lib/docker' });
  assert.deepEqual(parseDeviceUrl('ssh://admin@[fe80::1]:2222/mnt/data/docker/'), { user: 'admin', host: 'fe80::1', port: 2222, engineRoot: '/mnt/data/docker' });
  assert.throws(() => parseDeviceUrl('ssh://root:secret@host'), /passwords/);
  assert.throws(() => parseDeviceUrl('ssh://'), /not a valid ssh:\/\/ address/);
  // Patterns, negation, hashed names (ssh-keygen -H: HMAC-SHA1 of the name keyed by the salt).
  assert.ok(hostFieldMatches('a.example,[10.0.0.*]:22222', ['[10.0.0.5]:22222']));
  assert.ok(!hostFieldMatches('[10.0.0.*]:22222,![10.0.0.5]:22222', ['[10.0.0.5]:22222']));
  assert.ok(!hostFieldMatches('10.0.0.5', ['[10.0.0.5]:22222']), 'a port other than 22 needs the [host]:port form');
  const salt = Buffer.from('0123456789abcdef0123');
  const hashed = `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update('[dev]:22222').digest('base64')}`;
  assert.ok(hostFieldMatches(hashed, ['[dev]:22222']));
  assert.ok(!hostFieldMatches(hashed, ['[dev]:22']));
  // Key checks: match, mismatch of the same type, revoked, unknown.
  const blob = (type: string, body: string): Buffer => {
    const t = Buffer.from(type);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(t.length);
    return Buffer.concat([len, t, Buffer.from(body)]);
  };
  const k1 = blob('ssh-ed25519', 'one');
  const k2 = blob('ssh-ed25519', 'two');
  const kh = `[dev]:22222 ssh-ed25519 ${k1.toString('base64')}\n@revoked [dev]:22222 ssh-ed25519 ${k2.toString('base64')}\n`;
  assert.deepEqual(checkHostKey(kh, 'dev', 22222, k1, 'kh'), { ok: true });
  const revoked = checkHostKey(kh, 'dev', 22222, k2, 'kh');
  assert.ok(!revoked.ok && /@revoked/.test(revoked.reason));
  const other = checkHostKey(`[dev]:22222 ssh-ed25519 ${k1.toString('base64')}\n`, 'dev', 22222, k2, 'kh');
  assert.ok(!other.ok && /does NOT match/.test(other.reason));
  const unknown = checkHostKey('', 'dev', 22222, k1, 'kh');
  assert.ok(!unknown.ok && /not in kh/.test(unknown.reason));
  // The types known for the host are asked for first.
  const rsaOnly = knownHostEntries(`[dev]:22222 ssh-rsa ${k1.toString('base64')}\n`, 'dev', 22222);
  assert.deepEqual(hostKeyAlgorithms(rsaOnly).slice(0, 3), ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
});
