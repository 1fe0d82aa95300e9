/**
 * Issue "Inject straight into a balenaOS disk image", end to end at the CLI level: balenaOS-like
 * MBR (logical data partition) and GPT images whose resin-data is made by mkfs.ext4 -d from a
 * real engine root holding the supervisor image, too small for the apps; `transplant inject
 * <bundle> --disk <img>` run as an unprivileged user (nobody); judged by sfdisk/sgdisk, e2fsck,
 * a kernel loop mount and a real dockerd on <mount>/docker (every image resolves, runs and is
 * saved with the source's DiffIDs; every file equals the source's in every attribute).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildBalenaImage, buildUserImage, extractPartition, sfdiskPartitions, type BalenaImageOptions } from './harness/balena-image.js';
import {
  assertOneLineError,
  giveToUser,
  lsJson,
  show,
  spawnTransplant,
  transplant,
  userDir,
} from './harness/cli.js';
import { assertE2fsckClean, dataPartition, listDir, sha256File, tableProblems, withMountedData } from './harness/disk-judge.js';
import { Dockerd } from './harness/dockerd.js';
import { run, runOk } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { layerCacheIds } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

const T = { timeout: 600_000 };
const AMD64 = { slug: 'genericx86-64-ext', arch: 'amd64' };
const AARCH64 = { slug: 'raspberrypi4-64', arch: 'aarch64' };

interface Setup {
  fx: Fixtures;
  work: string;
  /** Owned by the unprivileged user: images and bundles it writes live here. */
  userWork: string;
  bundle: string;
  selected: FixtureImage[];
  /** ChainID -> cache ID of the supervisor's layers in the target fixture (must be reused). */
  reused: Map<string, string>;
  seq: number;
}

let setup: Promise<Setup> | undefined;

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    const fx = await getFixtures();
    const work = tempDir('tpdisk-');
    const userWork = userDir(path.join(work, 'u'));
    const { appA, appB, appC, appD } = fx.images;
    const bundle = path.join(userWork, 'apps.bundle');
    const r = transplant(['extract', '--from', fx.sourceRoot, '--image', 'fixture/app-a:1.0', '--image', 'fixture/app-b', '--image', fx.digestRef, '--image', 'fixture/app-d:3.1', '--output', bundle]);
    assert.equal(r.code, 0, `extract\n${show(r)}`);
    giveToUser(bundle);
    const reused = layerCacheIds(path.join(fx.targetResinData, 'docker'), [fx.supervisor]);
    return { fx, work, userWork, bundle, selected: [appA, appB, appC, appD], reused, seq: 0 };
  })();
  return setup;
}

/**
 * A balenaOS-like image whose resin-data is made (mkfs.ext4 -L resin-data -i 8192 -d) from the
 * target fixture (docker/ with the supervisor, resin-data/, remove_me_to_reset), given to the
 * unprivileged user in its directory.
 */
function buildImage(s: Setup, name: string, opts: BalenaImageOptions): string {
  return buildUserImage(s.work, s.userWork, name, { dataDir: s.fx.targetResinData, ...opts });
}

/** Files in the user's directory that a run left behind (work copies, resize side copies). */
function leftovers(dir: string, before: string[]): string[] {
  return listDir(dir).filter((f) => !before.includes(f));
}

/** Everything the issue asks of an image that images were injected into. */
async function judgeInjectedImage(s: Setup, img: string, table: 'mbr' | 'gpt', injected: FixtureImage[], before: string): Promise<void> {
  assert.deepEqual(tableProblems(img, table), [], `${img}: partition table`);
  assertE2fsckClean(img, s.work);
  // transplant ls on the image (as the user: it never needs to write).
  const listed = lsJson(img, { asUser: true });
  for (const want of [...injected, s.fx.supervisor]) {
    const l = listed.find((i) => i.id === want.id);
    assert.ok(l, `ls ${img} lists ${want.key} (${want.id})\n${JSON.stringify(listed)}`);
    assert.deepEqual([...l.references].sort(), [...want.refs].sort(), `ls ${img}: references of ${want.key}`);
  }
  assert.ok(!listed.some((i) => i.id === s.fx.images.unselected.id), 'ls lists an image that was not injected');
  await withMountedData(before, s.work, (old) =>
    withMountedData(img, s.work, async (mnt) => {
      assert.ok(fs.statSync(path.join(mnt, 'remove_me_to_reset')).isFile(), 'remove_me_to_reset is still there');
      assert.ok(fs.statSync(path.join(mnt, 'resin-data')).isDirectory(), 'resin-data/ is still there');
      assert.ok(!fs.existsSync(path.join(mnt, 'apps.json')), 'no apps.json was asked for');
      const problems = await verifyInjectedEngineRoot({
        engineRoot: path.join(mnt, 'docker'),
        sourceRoot: s.fx.sourceRoot,
        injected,
        preexisting: [s.fx.supervisor],
        // The supervisor's layers (written by mkfs.ext4 -d) must be as they were in the image.
        preexistingRoot: path.join(old, 'docker'),
        reusedCacheIds: s.reused,
        absentRefs: s.fx.images.unselected.refs,
        scratchDir: s.work,
      });
      assert.deepEqual(problems, [], problems.join('\n'));
    }), { readOnly: true });
}

/** A copy of an image as it is now (sparse), to compare with later. */
function keepCopy(s: Setup, img: string): string {
  const copy = path.join(s.work, `${path.basename(img)}.before`);
  runOk('cp', ['--sparse=always', img, copy]);
  return copy;
}

test('inject --disk into an MBR image (logical resin-data too small for the apps), as an unprivileged user, in place', T, async () => {
  const s = await getSetup();
  // 4 MiB, 1 KiB blocks: 512 inodes, about 100 free after the supervisor; the apps need more.
  const img = buildImage(s, 'balena-mbr.img', { table: 'mbr', dataMiB: 4, deviceType: AMD64 });
  const sizeBefore = fs.statSync(img).size;
  const dataBefore = dataPartition(img);
  const before = keepCopy(s, img);
  const dirBefore = listDir(s.userWork);
  const r = transplant(['inject', s.bundle, '--disk', img], { asUser: true });
  assert.equal(r.code, 0, `inject --disk as nobody\n${show(r)}`);
  assert.ok(fs.statSync(img).size > sizeBefore, `the image file grew (${sizeBefore} -> ${fs.statSync(img).size})`);
  const dataAfter = dataPartition(img);
  assert.equal(dataAfter.offset, dataBefore.offset, 'resin-data did not move');
  assert.ok(dataAfter.size > dataBefore.size, 'resin-data grew');
  assert.equal(fs.statSync(img).uid, 65534, 'the image still belongs to the user');
  assert.deepEqual(leftovers(s.userWork, dirBefore), [], 'no work copy left behind');
  await judgeInjectedImage(s, img, 'mbr', s.selected, before);
});

test('inject --disk --output into a GPT image (4 KiB blocks, journal): the input is untouched, the output judged', T, async () => {
  const s = await getSetup();
  const img = buildImage(s, 'balena-gpt.img', { table: 'gpt', dataMiB: 8, dataMkfsArgs: ['-b', '4096'], deviceType: AMD64 });
  const out = path.join(s.userWork, 'balena-gpt-out.img');
  const shaBefore = sha256File(img);
  const sizeBefore = fs.statSync(img).size;
  const dirBefore = listDir(s.userWork);
  const r = transplant(['inject', s.bundle, '--disk', img, '--output', out], { asUser: true });
  assert.equal(r.code, 0, `inject --disk --output as nobody\n${show(r)}`);
  assert.equal(sha256File(img), shaBefore, 'the input image is byte-for-byte unchanged');
  assert.ok(fs.statSync(out).size > sizeBefore, 'the output is larger than the input');
  assert.deepEqual(leftovers(s.userWork, dirBefore), [path.basename(out)], 'only the output was added');
  await judgeInjectedImage(s, out, 'gpt', s.selected, img);
});

test('inject --disk --dry-run prints the plan and changes nothing', T, async () => {
  const s = await getSetup();
  const img = buildImage(s, 'balena-dry.img', { table: 'mbr', dataMiB: 4, deviceType: AMD64 });
  const sha = sha256File(img);
  const dirBefore = listDir(s.userWork);
  const r = transplant(['inject', s.bundle, '--disk', img, '--dry-run'], { asUser: true });
  assert.equal(r.code, 0, show(r));
  for (const img2 of s.selected) assert.ok(r.stdout.includes(img2.id.slice(7, 19)), `the plan names ${img2.key}\n${r.stdout}`);
  assert.match(r.stdout, /total: \d+ layers to copy, \d+ to reuse/, 'the plan has a total');
  assert.match(r.stdout, /reuse \(target already has it\)/, 'the base layer the supervisor shares is reused');
  assert.match(r.stdout, /the image would grow by \d/, 'the plan says the (too small) image would grow');
  const j = transplant(['inject', s.bundle, '--disk', img, '--dry-run', '--json'], { asUser: true });
  assert.equal(j.code, 0, show(j));
  const plan = JSON.parse(j.stdout) as { images: { id: string }[]; bytes: number; inodes: number };
  assert.deepEqual(plan.images.map((i) => i.id).sort(), s.selected.map((i) => i.id).sort());
  assert.equal(sha256File(img), sha, 'the image is unchanged');
  assert.deepEqual(listDir(s.userWork), dirBefore, 'nothing was added beside it');
});

test('inject --disk refuses what is not a balenaOS image, a flasher image without an inner image, and another architecture (unless --dont-check-arch, or its older alias --force), with one line, changing nothing', T, async () => {
  const s = await getSetup();
  const dir = s.userWork;
  const random = path.join(dir, 'random.img');
  runOk('dd', ['if=/dev/urandom', `of=${random}`, 'bs=1M', 'count=8', 'status=none']);
  giveToUser(random);
  const zeros = path.join(dir, 'zeros.img');
  fs.writeFileSync(zeros, '');
  fs.truncateSync(zeros, 16 * 1024 * 1024);
  giveToUser(zeros);
  // A disk with an MBR and one FAT partition (a USB stick, not a balenaOS image).
  const stick = path.join(dir, 'stick.img');
  fs.writeFileSync(stick, '');
  fs.truncateSync(stick, 16 * 1024 * 1024);
  runOk('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', stick], { input: 'label: dos\nstart=2048, type=c\n' });
  giveToUser(stick);
  const flasher = buildImage(s, 'balena-flasher.img', { flasher: true, deviceType: AMD64 });
  const arm = buildImage(s, 'balena-arm.img', { table: 'mbr', dataMiB: 8, deviceType: AARCH64 });

  const cases: [string, RegExp][] = [
    [random, /is not a balenaOS disk image/],
    [zeros, /is not a balenaOS disk image/],
    [stick, /is not a balenaOS disk image: it has no resin-(data|boot) partition/],
    [s.bundle, /is not a balenaOS disk image/],
    // A flasher image without the inner /opt/*.balenaos-img.
    [flasher, /flasher/],
    [arm, /amd64.*aarch64.*--dont-check-arch|aarch64.*amd64.*--dont-check-arch/],
  ];
  for (const [file, want] of cases) {
    const sha = sha256File(file);
    const dirBefore = listDir(dir);
    const r = transplant(['inject', s.bundle, '--disk', file], { asUser: true });
    assertOneLineError(r, `inject --disk ${path.basename(file)}`);
    assert.match(r.stderr, want, `inject --disk ${path.basename(file)}: the reason\n${show(r)}`);
    assert.equal(sha256File(file), sha, `${path.basename(file)} is unchanged`);
    assert.deepEqual(listDir(dir), dirBefore, `nothing left beside ${path.basename(file)}`);
  }

  // --force: injected anyway, with a warning per image.
  const r = transplant(['inject', s.bundle, '--disk', arm, '--force'], { asUser: true });
  assert.equal(r.code, 0, `--force\n${show(r)}`);
  for (const img of s.selected) assert.ok(r.stderr.includes(img.refs[0] as string), `a warning names ${img.refs[0]}\n${show(r)}`);
  assert.match(r.stderr, /^warning: .*amd64.*aarch64/m);
  assert.deepEqual(tableProblems(arm, 'mbr'), []);
  assertE2fsckClean(arm, s.work);
  const listed = lsJson(arm);
  for (const img of s.selected) assert.ok(listed.some((l) => l.id === img.id), `ls lists ${img.key} after --force`);
});

/**
 * Follows a running transplant: when (ms after spawn) a file starting with `prefix` first
 * appears in `dir` (undefined when the run ended first), and how and when the run ended.
 */
function watchRun(child: ChildProcess, dir: string, prefix: string): {
  workCopyAt: Promise<number | undefined>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; atMs: number }>;
} {
  const t0 = Date.now();
  let stderr = '';
  let done = false;
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout?.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; atMs: number }>((resolve) =>
    child.on('exit', (code, signal) => {
      done = true;
      const atMs = Date.now() - t0;
      // stderr may still be draining: wait for its end.
      if (child.stderr && !child.stderr.readableEnded) child.stderr.on('end', () => resolve({ code, signal, stderr, atMs }));
      else resolve({ code, signal, stderr, atMs });
    }),
  );
  const workCopyAt = new Promise<number | undefined>((resolve) => {
    const poll = (): void => {
      if (fs.readdirSync(dir).some((f) => f.startsWith(prefix))) return resolve(Date.now() - t0);
      if (done) return resolve(undefined);
      setTimeout(poll, 2);
    };
    poll();
  });
  return { workCopyAt, exited };
}

/** A bundle large enough (about 50 MB, 3000 files) that an inject takes seconds. */
async function bigBundle(s: Setup): Promise<{ bundle: string; big: FixtureImage; root: string }> {
  const root = path.join(s.work, 'big-source');
  copyTree(s.fx.sourceRoot, root);
  const d = await Dockerd.start({ dataRoot: root });
  let big: FixtureImage;
  try {
    d.docker(['build', '--network', 'none', '--rm', '--force-rm', '-q', '-t', 'fixture/big:1', '-'], {
      input: [
        'FROM fixture/base:latest',
        'RUN mkdir /many && cd /many && for i in $(seq 1 3000); do echo "file $i" > f$i; done && dd if=/dev/urandom of=/big1 bs=1M count=24 2>/dev/null && dd if=/dev/urandom of=/big2 bs=1M count=24 2>/dev/null',
        'CMD ["/bin/sh", "-c", "echo transplant-marker-big"]',
        '',
      ].join('\n'),
      timeoutMs: 300_000,
    });
    const [id, layers] = d.docker(['image', 'inspect', '--format', '{{.Id}} {{json .RootFS.Layers}}', 'fixture/big:1']).trim().split(' ');
    big = { key: 'big', id: id as string, refs: ['fixture/big:1'], marker: 'transplant-marker-big', diffIds: JSON.parse(layers as string) as string[] };
  } finally {
    await d.stop();
  }
  d.cleanup();
  const bundle = path.join(s.userWork, 'big.bundle');
  const r = transplant(['extract', '--from', root, '--image', 'fixture/big:1', '--image', 'fixture/app-a:1.0', '--output', bundle]);
  assert.equal(r.code, 0, `extract of the big image\n${show(r)}`);
  giveToUser(bundle);
  return { bundle, big, root };
}

test('inject --disk killed (SIGKILL) midway leaves the image byte-for-byte unchanged; its .<name>.transplant-* work copy stays until the next run removes it', T, async () => {
  const s = await getSetup();
  const { bundle, big, root } = await bigBundle(s);
  const img = buildImage(s, 'balena-kill.img', { table: 'mbr', dataMiB: 4, deviceType: AMD64 });
  const sha = sha256File(img);
  const dirBefore = listDir(s.userWork);

  // Kills are anchored on what the run shows, not on wall-clock fractions of a whole run (a
  // fast machine finishes the whole inject in about a second): the moment its work copy
  // `.<name>.transplant-<pid>-*` appears beside the image, and fractions of the time from then
  // to its exit, measured on an uninterrupted run into a copy.
  const probe = path.join(s.userWork, 'probe.img');
  const probeChild = spawnTransplant(['inject', bundle, '--disk', img, '--output', probe], { asUser: true });
  const probeRun = watchRun(probeChild, s.userWork, `.probe.img.transplant-${probeChild.pid}-`);
  const probeEnd = await probeRun.exited;
  assert.equal(probeEnd.code, 0, `uninterrupted run\n${probeEnd.stderr}`);
  fs.rmSync(probe);
  const appearedMs = await probeRun.workCopyAt;
  assert.ok(appearedMs !== undefined, 'an uninterrupted run makes its work copy beside the output');
  const afterCopyMs = probeEnd.atMs - appearedMs;

  const pristine = path.join(s.work, 'kill-pristine.img');
  fs.copyFileSync(img, pristine);
  const notes: string[] = [];
  let kills = 0;
  for (const fraction of [0, 0.3, 0.6]) {
    const delay = Math.round(afterCopyMs * fraction);
    const child = spawnTransplant(['inject', bundle, '--disk', img], { asUser: true });
    // Its own work copy: a killed run's stays until this run removes it.
    const watched = watchRun(child, s.userWork, `.balena-kill.img.transplant-${child.pid}-`);
    const at = await watched.workCopyAt;
    if (at !== undefined) {
      await new Promise((resolve) => setTimeout(resolve, delay));
      child.kill('SIGKILL');
    }
    const { code, signal, stderr } = await watched.exited;
    if (signal !== 'SIGKILL') {
      // The machine was quicker this time: the run finished before the kill. It must have succeeded.
      assert.equal(code, 0, `a run that was not killed failed\n${stderr}`);
      notes.push(`${delay} ms after its work copy appeared the run had already finished`);
      fs.copyFileSync(pristine, img);
      continue;
    }
    kills++;
    assert.equal(sha256File(img), sha, `killed ${delay} ms after the work copy appeared: the image is byte-for-byte unchanged`);
    const left = leftovers(s.userWork, dirBefore);
    for (const f of left) {
      // SIGKILL gives no chance to clean up: the work copy (and a resize side copy when killed
      // while growing) stays beside the image. The next run removes those of dead processes,
      // so only this run's may be there.
      assert.match(f, new RegExp(`^\\.balena-kill\\.img\\.transplant-${child.pid}-[0-9a-f]{8}(\\.resize-\\d+)?$`), `killed after ${delay} ms: unexpected file ${f} left`);
    }
    notes.push(`killed ${delay}/${afterCopyMs} ms after its work copy appeared: left ${left.length === 0 ? 'nothing' : left.join(', ')}`);
  }
  assert.ok(kills >= 2, `only ${kills} runs could be killed midway: ${notes.join('; ')}`);
  process.stdout.write(`# ${notes.join('; ')}\n`);

  // The image still takes an uninterrupted inject, the result is sound, and the killed run's work files are gone.
  const r = transplant(['inject', bundle, '--disk', img], { asUser: true });
  assert.equal(r.code, 0, `inject after the killed runs\n${show(r)}`);
  assert.deepEqual(leftovers(s.userWork, dirBefore), [], 'the next run removed the work files of the killed ones');
  assert.deepEqual(tableProblems(img, 'mbr'), []);
  assertE2fsckClean(img, s.work);
  const listed = lsJson(img, { asUser: true });
  for (const want of [big, s.fx.images.appA, s.fx.supervisor]) assert.ok(listed.some((l) => l.id === want.id), `ls lists ${want.key}`);
  await withMountedData(pristine, s.work, (old) =>
    withMountedData(img, s.work, async (mnt) => {
      assert.ok(fs.existsSync(path.join(mnt, 'remove_me_to_reset')), 'remove_me_to_reset is still there');
      const problems = await verifyInjectedEngineRoot({
        engineRoot: path.join(mnt, 'docker'),
        sourceRoot: root,
        injected: [big, s.fx.images.appA],
        preexisting: [s.fx.supervisor],
        preexistingRoot: path.join(old, 'docker'),
        reusedCacheIds: s.reused,
        scratchDir: s.work,
      });
      assert.deepEqual(problems, [], problems.join('\n'));
    }), { readOnly: true });
});

test('inject --disk into a flasher image (MBR): the inner /opt/*.balenaos-img in flash-rootA is written and judged like any image', T, async () => {
  const s = await getSetup();
  const buildDir = path.join(s.work, `build-${++s.seq}`);
  const inner = buildBalenaImage(path.join(buildDir, 'inner'), 'inner.img', { table: 'mbr', dataMiB: 4, dataDir: s.fx.targetResinData, deviceType: AMD64 });
  const innerBefore = path.join(s.work, 'flasher-inner.before.img');
  runOk('cp', ['--sparse=always', inner.path, innerBefore]);
  const built = buildBalenaImage(buildDir, 'balena-flasher-full.img', { table: 'mbr', flasher: true, flasherInner: inner.path, deviceType: AMD64 });
  const img = path.join(s.userWork, 'balena-flasher-full.img');
  fs.renameSync(built.path, img);
  fs.rmSync(buildDir, { recursive: true, force: true });
  giveToUser(img);
  const sizeBefore = fs.statSync(img).size;
  const dirBefore = listDir(s.userWork);

  const r = transplant(['inject', s.bundle, '--disk', img], { asUser: true });
  assert.equal(r.code, 0, `inject --disk <flasher> as nobody\n${show(r)}`);
  assert.deepEqual(leftovers(s.userWork, dirBefore), [], 'no work copy left behind');
  assert.ok(fs.statSync(img).size >= sizeBefore, 'the flasher image did not shrink');
  assert.deepEqual(tableProblems(img, 'mbr'), [], 'flasher partition table');
  const parts = sfdiskPartitions(img).filter((p) => !['5', 'f', '85'].includes(p.type)).sort((a, b) => a.offset - b.offset);
  const labels = ['flash-boot', 'flash-rootA', 'flash-rootB', 'flash-state'];
  assert.equal(parts.length, labels.length, `partitions: ${JSON.stringify(parts)}`);
  for (const [i, p] of parts.entries()) {
    if (i === 0) continue;
    const copy = extractPartition(img, p.offset, p.size, path.join(s.work, `flasher-p${p.index}.ext4`));
    try {
      const fsck = run('e2fsck', ['-fn', copy]);
      assert.equal(fsck.code, 0, `${labels[i]}: e2fsck -fn\n${fsck.stdout}${fsck.stderr}`);
      if (i > 1) {
        // The partitions after flash-rootA kept their content (they may have moved up).
        const marker = run('debugfs', ['-R', 'cat /marker', copy]);
        assert.equal(marker.stdout, `${labels[i]}\n`, `${labels[i]} still holds its marker`);
      }
    } finally {
      fs.rmSync(copy, { force: true });
    }
  }
  // The inner image, copied out of flash-rootA through a kernel mount.
  const rootA = parts[1]!;
  const innerAfter = path.join(s.work, 'flasher-inner.after.img');
  const mnt = fs.mkdtempSync(path.join(s.work, 'rootA-'));
  runOk('mount', ['-t', 'ext4', '-o', `ro,noload,loop,offset=${rootA.offset},sizelimit=${rootA.size}`, img, mnt]);
  try {
    const found = fs.readdirSync(path.join(mnt, 'opt')).filter((n) => n.endsWith('.balenaos-img'));
    assert.equal(found.length, 1, `one inner image in flash-rootA/opt: ${found.join(', ')}`);
    runOk('cp', ['--sparse=always', path.join(mnt, 'opt', found[0]!), innerAfter]);
  } finally {
    runOk('umount', [mnt]);
    fs.rmdirSync(mnt);
  }
  assert.ok(fs.statSync(innerAfter).size > fs.statSync(innerBefore).size, 'the inner image grew (its resin-data was too small)');
  await judgeInjectedImage(s, innerAfter, 'mbr', s.selected, innerBefore);
});
