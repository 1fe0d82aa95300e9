/**
 * Targets that fight back, and the run's lifecycle (issue 13, items 4-9): an in-place disk
 * image named through a symlink, owned by someone else or not writable; two runs on one
 * target; an engine root reached through a bind mount while a real dockerd runs on it; a
 * failure after the images are written; SIGKILLed runs of a bundle without cache IDs; and
 * SIGINT/SIGTERM in every phase. Everything real: disk images built with sfdisk/mkfs, real
 * flock(1) holders, a real bind mount, a real dockerd, the CLI killed with real signals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assertOneLineError, giveToUser, lsJson, show, spawnTransplant, transplant, userDir, USER_UID } from './harness/cli.js';
import { tempDir } from './harness/fixtures.js';
import { bundleBytes, dockerArchiveBytes, type HostileLayer } from './harness/hostile.js';
import { buildBalenaImage } from './harness/balena-image.js';
import { sha256File } from './harness/disk-judge.js';
import { diffSnapshots, snapshotTree, readRepositories } from './harness/judge.js';
import { Dockerd } from './harness/dockerd.js';
import { requireTools, run, runOk } from './harness/exec.js';
import { HostTreeWriter } from '../src/targets/host-fs.js';
import { openSource } from '../src/sources/open.js';
import { injectImages } from '../src/inject/inject.js';
import { writeApps } from '../src/preload/apps.js';
import { normalizeTargetState } from '../src/balena/apps-json.js';

const T = { timeout: 600_000 };
const AMD64 = { slug: 'genericx86-64-ext', arch: 'amd64' };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A layer of `files` files of `size` random bytes each. */
function bigLayer(prefix: string, files: number, size: number): HostileLayer {
  return [{ name: prefix, type: 'directory', mode: 0o755 }, ...Array.from({ length: files }, (_, i) => ({ name: `${prefix}/f${i}`, content: randomBytes(size) }))];
}

async function writeBundle(file: string, layers: HostileLayer[], ref: string): Promise<string> {
  fs.writeFileSync(file, await bundleBytes(layers, { ref }));
  return file;
}

/** An empty engine root as a fresh engine leaves it, inside a resin-data directory. */
function emptyResinData(dir: string): string {
  fs.mkdirSync(path.join(dir, 'docker', 'image', 'overlay2', 'layerdb', 'sha256'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'docker', 'overlay2', 'l'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'docker', 'image', 'overlay2', 'repositories.json'), '{"Repositories":{}}', { mode: 0o600 });
  return dir;
}

const unchanged = (before: ReturnType<typeof snapshotTree>, dir: string): string[] => diffSnapshots(before, snapshotTree(dir), { directoryTimes: false });

const ends = new WeakMap<ChildProcess, Promise<number>>();

/**
 * A process's end, once its output is all read ('close', not 'exit', which can come before
 * the last stderr bytes): its exit code, or 128 + n when signal n ended it. Tracked from the
 * first call (collectStderr makes it right after spawning).
 */
function exited(child: ChildProcess): Promise<number> {
  let end = ends.get(child);
  if (!end) {
    end = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 2))));
    ends.set(child, end);
  }
  return end;
}

function collectStderr(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (c: Buffer) => (text += c.toString()));
  child.stdout?.resume();
  void exited(child);
  return () => text;
}

async function until(what: string, cond: () => boolean, timeoutMs = 60_000, everyMs = 5): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** True while process `pid` holds a file below `dir` open (/proc/<pid>/fd). */
function opens(pid: number, dir: string): boolean {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(dir + '/');
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/** flock(1) holding an exclusive lock on `file` until killed; resolves once the lock is taken. */
async function holdLock(file: string): Promise<ChildProcess> {
  requireTools('flock');
  // --no-fork: flock(1) becomes the sleep that holds the lock, so killing it releases the lock.
  const holder = spawn('flock', ['--no-fork', '-x', file, 'sleep', '600'], { stdio: 'ignore' });
  const ino = fs.statSync(file).ino;
  await until('flock(1) to take its lock', () => fs.readFileSync('/proc/locks', 'utf8').split('\n').some((l) => l.includes(`FLOCK`) && l.includes(` ${holder.pid} `) && l.includes(`:${ino} `)));
  return holder;
}

// ---- item 4: in-place --disk ---------------------------------------------------------

test('in-place --disk through a symlink writes the real image, keeps its owner and mode, and refuses an image the user cannot write', T, async () => {
  const work = tempDir('tpht-disk-');
  const img = buildBalenaImage(path.join(work, 'build'), 'base.img', { table: 'gpt', deviceType: AMD64 }).path;
  const bundle = await writeBundle(path.join(work, 's.bundle'), [[{ name: 'hello', content: 'hi\n' }]], 'ht/disk:1');

  // A symlink named as the image: the real file takes the result, the symlink stays.
  const real = path.join(work, 'real.img');
  fs.copyFileSync(img, real);
  fs.chownSync(real, 1234, 5678);
  fs.chmodSync(real, 0o640);
  const link = path.join(work, 'link.img');
  fs.symlinkSync('real.img', link);
  const before = sha256File(real);
  const r = transplant(['inject', bundle, '--disk', link]);
  assert.equal(r.code, 0, show(r));
  assert.ok(fs.lstatSync(link).isSymbolicLink(), 'link.img is still a symlink');
  assert.equal(fs.readlinkSync(link), 'real.img');
  assert.notEqual(sha256File(real), before, 'the real image was written');
  const st = fs.statSync(real);
  assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [1234, 5678, 0o640], 'owner and mode kept');
  assert.ok(lsJson(real).some((i) => i.references.includes('ht/disk:1')), 'the real image holds the injected image');
  assert.deepEqual(fs.readdirSync(work).filter((n) => n.startsWith('.')), [], 'no work copy left beside it');

  // A root-owned image the user cannot write, in a directory the user can: refused, untouched.
  const u = userDir(path.join(work, 'u'));
  const rootImg = path.join(u, 'root.img');
  fs.copyFileSync(img, rootImg);
  fs.chmodSync(rootImg, 0o644);
  const userBundle = path.join(u, 's.bundle');
  fs.copyFileSync(bundle, userBundle);
  giveToUser(userBundle);
  const h = sha256File(rootImg);
  const denied = transplant(['inject', userBundle, '--disk', rootImg], { asUser: true });
  assertOneLineError(denied, 'an image the user cannot write');
  assert.match(denied.stderr, /cannot write it/);
  const after = fs.statSync(rootImg);
  assert.deepEqual([after.uid, after.mode & 0o7777, sha256File(rootImg)], [0, 0o644, h], 'the image is untouched and still root-owned');
  assert.deepEqual(fs.readdirSync(u).sort(), ['root.img', 's.bundle'], 'nothing left beside it');

  // Writable by the user's group but owned by another user: the result could not keep the owner.
  fs.chownSync(rootImg, 0, 65534);
  fs.chmodSync(rootImg, 0o664);
  const notOwner = transplant(['inject', userBundle, '--disk', rootImg], { asUser: true });
  assertOneLineError(notOwner, 'an image owned by another user');
  assert.equal(fs.statSync(rootImg).uid, 0);
  assert.equal(sha256File(rootImg), h);
  void USER_UID;
});

// ---- item 5: one run at a time ----------------------------------------------------------

test('a target is locked for the whole run: a second run waits for the holder, or with --no-wait fails naming its pid', T, async () => {
  const work = tempDir('tpht-lock-');
  const rd = emptyResinData(path.join(work, 'resin-data'));
  const bundle = await writeBundle(path.join(work, 'a.bundle'), [[{ name: 'a', content: 'a\n' }]], 'ht/lock-a:1');
  const snap = snapshotTree(rd);

  const holder = await holdLock(path.join(rd, 'docker'));
  try {
    const r = transplant(['inject', bundle, '--resin-data', rd, '--no-wait']);
    assertOneLineError(r, 'a locked engine root with --no-wait');
    assert.match(r.stderr, new RegExp(`in use by pid ${holder.pid}\\b`));
    assert.deepEqual(unchanged(snap, rd), [], 'the target is untouched');
    // --engine-root of the same directory meets the same lock.
    const e = transplant(['inject', bundle, '--engine-root', path.join(rd, 'docker'), '--no-wait']);
    assertOneLineError(e, 'the same engine root as --engine-root');

    // Without --no-wait the run waits (saying so) and completes once the holder is gone.
    const waiting = spawnTransplant(['inject', bundle, '--resin-data', rd]);
    const stderr = collectStderr(waiting);
    await until('the waiting message', () => /in use by pid \d+; waiting/.test(stderr()), 30_000, 20);
    await sleep(500);
    assert.equal(waiting.exitCode, null, 'it is still waiting while the lock is held');
    assert.deepEqual(unchanged(snap, rd), [], 'nothing written while waiting');
    holder.kill('SIGKILL');
    assert.equal(await exited(waiting), 0, stderr());
    assert.equal(readRepositories(path.join(rd, 'docker')).get('ht/lock-a:1') !== undefined, true);
  } finally {
    holder.kill('SIGKILL');
  }

  // Two real runs at once into one engine root, and into one disk image in place: both
  // complete, neither loses the other's images.
  const big = await writeBundle(path.join(work, 'big.bundle'), [bigLayer('big', 4, 8 << 20)], 'ht/big:1');
  const small = await writeBundle(path.join(work, 'small.bundle'), [bigLayer('small', 2, 1 << 20)], 'ht/small:1');
  const root = path.join(work, 'root');
  fs.mkdirSync(root);
  const a = spawnTransplant(['inject', big, '--engine-root', root]);
  const b = spawnTransplant(['inject', small, '--engine-root', root]);
  const [ea, eb] = [collectStderr(a), collectStderr(b)];
  assert.deepEqual([await exited(a), await exited(b)], [0, 0], `${ea()}\n${eb()}`);
  const refs = readRepositories(root);
  assert.ok(refs.has('ht/big:1') && refs.has('ht/small:1'), `both references: ${[...refs.keys()].join(', ')}`);
  assert.deepEqual(lsJson(root).flatMap((i) => i.references).sort(), ['ht/big:1', 'ht/small:1']);

  const disk = buildBalenaImage(path.join(work, 'build'), 'd.img', { table: 'gpt', deviceType: AMD64 }).path;
  const da = spawnTransplant(['inject', big, '--disk', disk]);
  await sleep(300);
  const db = spawnTransplant(['inject', small, '--disk', disk]);
  const [sa, sb] = [collectStderr(da), collectStderr(db)];
  assert.deepEqual([await exited(da), await exited(db)], [0, 0], `${sa()}\n${sb()}`);
  const listed = lsJson(disk).flatMap((i) => i.references);
  assert.ok(listed.includes('ht/big:1') && listed.includes('ht/small:1'), `both images in the disk image: ${listed.join(', ')}`);

  // The disk image's own lock: --no-wait names the holder.
  const diskHolder = await holdLock(disk);
  try {
    const r = transplant(['inject', small, '--disk', disk, '--no-wait']);
    assertOneLineError(r, 'a locked disk image with --no-wait');
    assert.match(r.stderr, new RegExp(`in use by pid ${diskHolder.pid}\\b`));
  } finally {
    diskHolder.kill('SIGKILL');
  }
});

// ---- item 6: a live engine behind a bind mount -----------------------------------------

test('an engine root reached through a bind mount (or a symlink) of a live engine\'s data root is refused', T, async () => {
  requireTools('mount', 'umount');
  const work = tempDir('tpht-live-');
  const live = path.join(work, 'live');
  const bind = path.join(work, 'bind');
  fs.mkdirSync(bind);
  const bundle = await writeBundle(path.join(work, 's.bundle'), [[{ name: 'x', content: 'x\n' }]], 'ht/live:1');
  const d = await Dockerd.start({ dataRoot: live });
  let mounted = false;
  try {
    runOk('mount', ['--bind', live, bind]);
    mounted = true;
    const before = fs.readFileSync(path.join(live, 'image', 'overlay2', 'repositories.json'));
    for (const target of [bind, live]) {
      const r = transplant(['inject', bundle, '--engine-root', target]);
      assertOneLineError(r, `inject into ${target} while dockerd runs on ${live}`);
      assert.match(r.stderr, new RegExp(`an engine \\(pid ${d.pid}\\) is running`));
    }
    fs.symlinkSync(bind, path.join(work, 'via-symlink'));
    const s = transplant(['inject', bundle, '--engine-root', path.join(work, 'via-symlink')]);
    assertOneLineError(s, 'through a symlink to the bind mount');
    assert.deepEqual(fs.readFileSync(path.join(live, 'image', 'overlay2', 'repositories.json')), before, 'repositories.json untouched');
    assert.deepEqual(fs.readdirSync(path.join(live, 'overlay2')).filter((n) => n !== 'l'), [], 'no layer written');
  } finally {
    if (mounted) run('umount', [bind]);
    await d.stop();
    d.cleanup();
  }
});

// ---- item 7: a failure after the images are written ----------------------------------------

/** A v3 target state (as the dashboard copies it) whose one service runs ht/late:1. */
const APPS = {
  local: {
    name: 'ht-device',
    config: {},
    apps: {
      '8a3a8a2cf1b44d36a0c9e1a1f2f2b9f0': {
        id: 1234567,
        name: 'ht-fleet',
        class: 'fleet',
        releases: {
          '4f1c1e2a9d5b4c7e8f0a1b2c3d4e5f60': {
            id: 2345678,
            services: { main: { id: 345678, image_id: 4567890, image: 'ht/late:1', environment: {}, labels: {}, running: true, composition: {} } },
            volumes: {},
            networks: {},
          },
        },
      },
    },
  },
  dependent: { apps: {} },
};

test('a run that would fail late (apps.json a directory, a keyfile conflict) refuses before writing; a failure after writing undoes images and apps.json', T, async () => {
  const work = tempDir('tpht-late-');
  const bundle = await writeBundle(path.join(work, 's.bundle'), [[{ name: 'late', content: 'late\n' }]], 'ht/late:1');
  const appsFile = path.join(work, 'apps-in.json');
  fs.writeFileSync(appsFile, JSON.stringify(APPS));

  // apps.json is a directory.
  const rd = emptyResinData(path.join(work, 'rd', 'resin-data'));
  fs.mkdirSync(path.join(rd, 'apps.json'));
  let snap = snapshotTree(rd);
  const r = transplant(['inject', bundle, '--resin-data', rd, '--apps', appsFile]);
  assertOneLineError(r, 'apps.json is a directory');
  assert.match(r.stderr, /apps\.json exists and is a directory/);
  assert.deepEqual(unchanged(snap, rd), [], 'nothing injected, no temp file');

  // A keyfile conflict in --resin-boot: the user's apps.json and the engine root stay as they were.
  fs.rmdirSync(path.join(rd, 'apps.json'));
  fs.writeFileSync(path.join(rd, 'apps.json'), '{"old":"the user\'s apps.json"}');
  const boot = path.join(work, 'boot');
  fs.mkdirSync(path.join(boot, 'system-connections'), { recursive: true });
  fs.writeFileSync(path.join(boot, 'config.json'), '{}');
  fs.writeFileSync(path.join(boot, 'system-connections', 'static-eth0'), '[connection]\nid=other\ntype=ethernet\n');
  snap = snapshotTree(rd);
  const bootSnap = snapshotTree(boot);
  const k = transplant(['inject', bundle, '--resin-data', rd, '--apps', appsFile, '--resin-boot', boot, '--static-ip', '10.0.0.2/24']);
  assertOneLineError(k, 'a keyfile conflict');
  assert.match(k.stderr, /static-eth0 already exists/);
  assert.deepEqual(unchanged(snap, rd), [], 'resin-data untouched');
  assert.deepEqual(unchanged(bootSnap, boot), [], 'resin-boot untouched');

  // A failure after every write (the last step of finish fails): images, apps.json and the
  // temp files all undone, through the real host writer.
  const source = await openSource(bundle);
  try {
    const images = await source.images();
    const writer = new HostTreeWriter(rd);
    const apps = normalizeTargetState(APPS, 'apps');
    await assert.rejects(
      injectImages(source, images, writer, 'docker', {
        finish: async (w, undo) => {
          await writeApps(w, apps, undo);
          assert.match(fs.readFileSync(path.join(rd, 'apps.json'), 'utf8'), /ht\/late:1/, 'apps.json was written');
          throw new Error('the keyfile could not be written');
        },
      }),
      /the keyfile could not be written/,
    );
    await writer.close();
  } finally {
    await source.close();
  }
  // Files put back are rewritten (same content, owner and mode; a new mtime).
  const restored = /^(apps\.json|docker\/image\/overlay2\/repositories\.json): mtime /;
  assert.deepEqual(unchanged(snap, rd).filter((d) => !restored.test(d)), [], 'the whole run undone');
  assert.equal(fs.readFileSync(path.join(rd, 'apps.json'), 'utf8'), '{"old":"the user\'s apps.json"}');
});

// ---- item 8: SIGKILLed runs of a bundle without cache IDs ---------------------------------

test('SIGKILLed runs of a bundle without cache IDs leave nothing a rerun does not remove', T, async () => {
  const work = tempDir('tpht-orphan-');
  const archive = path.join(work, 'image.tar');
  fs.writeFileSync(archive, await dockerArchiveBytes([bigLayer('one', 6, 8 << 20), bigLayer('two', 6, 8 << 20)], { ref: 'ht/orphan:1' }));
  const bundle = path.join(work, 'o.bundle');
  const x = transplant(['extract', '--from', archive, '--image', 'ht/orphan:1', '--output', bundle]);
  assert.equal(x.code, 0, show(x));
  fs.rmSync(archive);
  const root = path.join(work, 'root');
  fs.mkdirSync(root);
  const overlay = path.join(root, 'overlay2');
  const entries = (): string[] => (fs.existsSync(overlay) ? fs.readdirSync(overlay).filter((n) => n !== 'l') : []);
  // Runs killed once they have written so many bytes beyond what earlier runs left (the
  // first inside the first layer, the second inside the second layer).
  const bytesIn = (dir: string): number => {
    let n = 0;
    const walk = (d: string): void => {
      let list: fs.Dirent[];
      try {
        list = fs.readdirSync(d, { withFileTypes: true });
      } catch {
        return; // renamed or removed meanwhile
      }
      for (const e of list) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) n += fs.statSync(p, { throwIfNoEntry: false })?.size ?? 0;
      }
    };
    for (const name of entries()) walk(path.join(overlay, name));
    return n;
  };
  let kills = 0;
  for (const mb of [8, 40, 60]) {
    const base = bytesIn(overlay);
    const child = spawnTransplant(['inject', bundle, '--engine-root', root]);
    collectStderr(child);
    const poll = setInterval(() => {
      if (child.exitCode === null && bytesIn(overlay) > base + mb * (1 << 20)) {
        child.kill('SIGKILL');
        clearInterval(poll);
      }
    }, 3);
    const code = await exited(child);
    clearInterval(poll);
    if (code === 137) kills++;
  }
  assert.ok(kills >= 2, `at least two runs were killed midway (${kills})`);
  assert.ok(entries().length > 0, 'the killed runs left partial layer directories');
  const done = transplant(['inject', bundle, '--engine-root', root]);
  assert.equal(done.code, 0, show(done));
  const used = fs.readdirSync(path.join(root, 'image', 'overlay2', 'layerdb', 'sha256')).map((h) => fs.readFileSync(path.join(root, 'image', 'overlay2', 'layerdb', 'sha256', h, 'cache-id'), 'utf8'));
  assert.deepEqual(entries().sort(), used.sort(), 'overlay2 holds exactly the layers\' directories');
  assert.equal(fs.readdirSync(path.join(overlay, 'l')).length, 2, 'one l/ link per layer');
  assert.deepEqual(fs.readdirSync(path.join(root, 'image', 'overlay2', 'layerdb', 'tmp')), []);
  const v = transplant(['verify', root]);
  assert.equal(v.code, 0, show(v));

  // The same for the other temp files a killed run leaves: a partial bundle of a killed
  // extract, a keyfile being written into --resin-boot (both named with the dead pid).
  const dead = spawn('true');
  await exited(dead);
  const out = path.join(work, 'again.bundle');
  const stale = path.join(work, `.again.bundle.partial-${dead.pid}-0badcafe`);
  fs.writeFileSync(stale, 'left by a killed extract');
  const again = transplant(['extract', '--from', root, '--image', 'ht/orphan:1', '--output', out]);
  assert.equal(again.code, 0, show(again));
  assert.ok(!fs.existsSync(stale), 'the partial bundle of a killed extract is removed');
  const rd = emptyResinData(path.join(work, 'rd'));
  const boot = path.join(work, 'boot');
  fs.mkdirSync(path.join(boot, 'system-connections'), { recursive: true });
  fs.writeFileSync(path.join(boot, 'config.json'), '{}');
  const staleKey = path.join(boot, 'system-connections', `.static-eth0.${dead.pid}.transplant.ignore`);
  fs.writeFileSync(staleKey, 'left by a killed run');
  const net = transplant(['inject', out, '--resin-data', rd, '--resin-boot', boot, '--static-ip', '10.0.0.2/24']);
  assert.equal(net.code, 0, show(net));
  assert.deepEqual(fs.readdirSync(path.join(boot, 'system-connections')), ['static-eth0'], 'only the keyfile is left');
});

// ---- item 9: the first signal stops every phase --------------------------------------------

test('the first SIGINT/SIGTERM stops every phase promptly (verify, waiting for a lock, copying a disk image, writing), undoing what it did', T, async () => {
  const work = tempDir('tpht-signal-');
  const bundle = await writeBundle(path.join(work, 'b.bundle'), [bigLayer('sig', 8, 8 << 20)], 'ht/signal:1');

  // verify of an engine root with many files (every layer rebuilt from its tar-split and hashed).
  {
    const archive = path.join(work, 'many.tar');
    const many: HostileLayer = [{ name: 'm', type: 'directory', mode: 0o755 }, ...Array.from({ length: 30_000 }, (_, i) => ({ name: `m/${i}`, content: `${i}\n` }))];
    fs.writeFileSync(archive, await dockerArchiveBytes([many, bigLayer('big', 4, 8 << 20)], { ref: 'ht/many:1' }));
    const vroot = path.join(work, 'vroot');
    fs.mkdirSync(vroot);
    const i = transplant(['inject', archive, '--engine-root', vroot]);
    assert.equal(i.code, 0, show(i));
    const child = spawnTransplant(['verify', vroot]);
    const stderr = collectStderr(child);
    // Signalled once it reads the target (earlier, before the CLI has installed its handlers,
    // Node's default kills it with the same status, which would prove nothing).
    await until('verify to read the engine root', () => opens(child.pid as number, vroot), 60_000, 2);
    assert.equal(child.exitCode, null, 'verify is still running when the signal comes (else this test proves nothing)');
    const t0 = Date.now();
    child.kill('SIGINT');
    const code = await Promise.race([exited(child), sleep(5000).then(() => -1)]);
    child.kill('SIGKILL');
    assert.equal(code, 130, `verify stops on SIGINT with 130 (took ${Date.now() - t0} ms)\n${stderr()}`);
    assert.match(stderr(), /^error: interrupted by SIGINT; nothing was changed$/m, 'it says why it stopped');
  }

  // Waiting for another run's lock.
  const rd = emptyResinData(path.join(work, 'resin-data'));
  const snap = snapshotTree(rd);
  const holder = await holdLock(rd);
  try {
    const child = spawnTransplant(['inject', bundle, '--resin-data', rd]);
    const stderr = collectStderr(child);
    await until('the waiting message', () => /waiting/.test(stderr()), 30_000, 20);
    child.kill('SIGTERM');
    const code = await Promise.race([exited(child), sleep(5000).then(() => -1)]);
    child.kill('SIGKILL');
    assert.equal(code, 143, `a run waiting for the lock stops on SIGTERM with 143\n${stderr()}`);
    assert.match(stderr(), /interrupted by SIGTERM/);
    assert.deepEqual(unchanged(snap, rd), [], 'nothing written');
  } finally {
    holder.kill('SIGKILL');
  }

  // Writing: stopped mid-layer, everything undone.
  {
    const child = spawnTransplant(['inject', bundle, '--resin-data', rd]);
    const stderr = collectStderr(child);
    const overlay = path.join(rd, 'docker', 'overlay2');
    await until('a layer directory being written', () => fs.readdirSync(overlay).some((n) => n.startsWith('.transplant-partial-')), 60_000, 2);
    child.kill('SIGINT');
    const code = await Promise.race([exited(child), sleep(10_000).then(() => -1)]);
    child.kill('SIGKILL');
    assert.equal(code, 130, `a run stopped while writing exits 130\n${stderr()}`);
    assert.match(stderr(), /interrupted by SIGINT/);
    assert.deepEqual(unchanged(snap, rd), [], 'what it wrote is undone');
  }

  // Copying a disk image to its work copy (a big sparse image: the copy reads every byte).
  {
    const img = buildBalenaImage(path.join(work, 'build'), 'big.img', { table: 'gpt', deviceType: AMD64, dataMiB: 6000 }).path;
    // Untouched: an in-place run replaces the image by rename, so the same inode, size and mtime
    // mean it was never written (hashing 6 GB would dominate the test).
    const id = (): string => {
      const st = fs.statSync(img, { bigint: true });
      return `${st.ino}:${st.size}:${st.mtimeNs}`;
    };
    const before = id();
    const child = spawnTransplant(['inject', bundle, '--disk', img]);
    const stderr = collectStderr(child);
    const dir = path.dirname(img);
    await until('the work copy to appear', () => fs.readdirSync(dir).some((n) => n.startsWith('.big.img.transplant-')), 60_000, 2);
    child.kill('SIGTERM');
    const t0 = Date.now();
    const code = await Promise.race([exited(child), sleep(5000).then(() => -1)]);
    child.kill('SIGKILL');
    assert.equal(code, 143, `a run copying the image stops on SIGTERM with 143 (after ${Date.now() - t0} ms)\n${stderr()}`);
    assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('.')), [], 'the work copy is removed');
    assert.equal(id(), before, 'the image is untouched');
  }
});
