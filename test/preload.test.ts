/**
 * Issue "One command from the device state to a preloaded target", end to end at the CLI
 * level: `transplant preload --from <source> --apps <state> <target>` with the state in its
 * three forms (API device state, dashboard copy, plain v3 apps.json) naming fixture images
 * by tag, by bare name, by digest reference, by a cloud name that only shares the manifest
 * digest, and by a digest name that only the repository matches. Judged by a real engine
 * doing the supervisor's lookup, by a kernel mount of the disk image, by mtools and by
 * NetworkManager's own nmcli.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildBalenaImage, extractPartition, sfdiskPartitions } from './harness/balena-image.js';
import { assertErrorFirstLine, assertOneLineError, giveToUser, lsJson, show, transplant, userDir } from './harness/cli.js';
import { assertE2fsckClean, listDir, mtoolsRead, nmcliAccepts, sha256File, tableProblems, withMountedData } from './harness/disk-judge.js';
import { Dockerd } from './harness/dockerd.js';
import { repoRoot, run, runOk } from './harness/exec.js';
import { copyTree, getFixtures, tempDir, type FixtureImage, type Fixtures } from './harness/fixtures.js';
import { layerCacheIds, treeDigest } from './harness/judge.js';
import { verifyInjectedEngineRoot } from './harness/verify.js';

const T = { timeout: 600_000 };
const AMD64 = { slug: 'genericx86-64-ext', arch: 'amd64' };
const DEVICE = 'b4a9c1e0f2d34e5f8a7b6c5d4e3f2a1b';
const APP = 'e7f1d3a2c9b84f0e9d6c5b4a3f2e1d0c';
const RELEASE = '3c2a7f8e9d1b4c6a5e0f7d8c9b2a1e4f';
const BAD = path.join(repoRoot(), 'test', 'fixtures', 'balena');

interface Service {
  name: string;
  image: string;
  /** The fixture image the supervisor must find for it. */
  expect: FixtureImage;
  /** How the engine finds it: by `GET /images/<name>/json`, or only by the reference filter. */
  via: 'exact' | 'filter';
}

interface Setup {
  fx: Fixtures;
  work: string;
  userWork: string;
  services: Service[];
  /** The v3 apps.json every form must turn into. */
  appsJson: Record<string, unknown>;
  forms: { v3: string; api: string; dashboard: string };
  /** The images the services need (each once). */
  needed: FixtureImage[];
  reused: Map<string, string>;
  seq: number;
}

let setup: Promise<Setup> | undefined;

function getSetup(): Promise<Setup> {
  setup ??= (async () => {
    const fx = await getFixtures();
    const work = tempDir('tppre-');
    const userWork = userDir(path.join(work, 'u'));
    const { appA, appB, appC, appD } = fx.images;
    const digest = fx.digestRef.slice(fx.digestRef.indexOf('@') + 1);
    const services: Service[] = [
      { name: 'main', image: 'fixture/app-a:1.0', expect: appA, via: 'exact' },
      { name: 'bare-name', image: 'fixture/app-b', expect: appB, via: 'exact' },
      { name: 'pinned', image: fx.digestRef, expect: appC, via: 'exact' },
      // Only the manifest digest is shared (appC holds it as fixture/app-c@…): the planner adds this exact key.
      { name: 'cloud', image: `registry2.balena-cloud.com/v2/9f2e4c1a7b3d5e8f0a6c2b9d4e7f1a3c@${digest}`, expect: appC, via: 'exact' },
      // A digest the source does not hold, in a repository with one image: the engine's reference filter finds it.
      { name: 'rich_1.x', image: `fixture/app-d@sha256:${'5e'.repeat(32)}`, expect: appD, via: 'filter' },
    ];
    const app = {
      id: 1861234,
      name: 'sensor-fleet',
      class: 'fleet',
      releases: {
        [RELEASE]: {
          id: 3094011,
          services: Object.fromEntries(
            services.map((s, i) => [
              s.name,
              {
                id: 100 + i,
                image_id: 200 + i,
                image: s.image,
                running: true,
                environment: { SERVICE: s.name },
                labels: { 'io.balena.service-name': s.name },
                composition: { restart: 'always' },
              },
            ]),
          ),
          volumes: { data: {} },
          networks: {},
        },
      },
    };
    const config = { HOST_CONFIG_gpu_mem: '64', SUPERVISOR_POLL_INTERVAL: '900000' };
    const appsJson = { config, apps: { [APP]: app } };
    const write = (name: string, v: unknown): string => {
      const f = path.join(userWork, name);
      fs.writeFileSync(f, JSON.stringify(v, null, 2));
      return giveToUser(f);
    };
    const forms = {
      v3: write('apps-v3.json', appsJson),
      api: write('device-state.json', { [DEVICE]: { name: 'quiet-forest', config, apps: { [APP]: app } } }),
      dashboard: write('dashboard-state.json', { local: { name: 'quiet-forest', config, apps: { [APP]: app } }, dependent: { apps: {}, devices: {} } }),
    };
    const reused = layerCacheIds(path.join(fx.targetResinData, 'docker'), [fx.supervisor]);
    return { fx, work, userWork, services, appsJson, forms, needed: [appA, appB, appC, appD], reused, seq: 0 };
  })();
  return setup;
}

function resinDataCopy(s: Setup, name: string): string {
  const dir = path.join(s.work, name, 'resin-data');
  copyTree(s.fx.targetResinData, dir);
  return dir;
}

function buildImage(s: Setup, name: string, dataDir = s.fx.targetResinData): string {
  const buildDir = path.join(s.work, `build-${++s.seq}`);
  // resin-data from the target fixture, 4 MiB: too few inodes for the apps, so it must grow.
  const img = buildBalenaImage(buildDir, name, { table: 'mbr', dataMiB: 4, dataDir, deviceType: AMD64 });
  const dest = path.join(s.userWork, name);
  fs.renameSync(img.path, dest);
  fs.rmSync(buildDir, { recursive: true, force: true });
  return giveToUser(dest);
}

/** The supervisor's lookup (src/compose/images.ts inspectByName), asked of a real engine. */
function supervisorLookup(d: Dockerd, name: string): { id?: string; via?: 'exact' | 'filter' } {
  // docker-utils normaliseImageName: repo@digest (tag dropped), else repo:tag with :latest added.
  const at = name.indexOf('@');
  const slash = name.lastIndexOf('/');
  let repo: string;
  let normalised: string;
  let pattern: string;
  if (at >= 0) {
    const before = name.slice(0, at);
    const colon = before.lastIndexOf(':');
    repo = colon > slash ? before.slice(0, colon) : before;
    normalised = `${repo}@${name.slice(at + 1)}`;
    pattern = repo;
  } else {
    const colon = name.lastIndexOf(':');
    normalised = colon > slash ? name : `${name}:latest`;
    pattern = normalised;
  }
  const exact = d.dockerRaw(['image', 'inspect', '--format', '{{.Id}}', normalised]);
  if (exact.code === 0) return { id: exact.stdout.trim(), via: 'exact' };
  const listed = d.docker(['image', 'ls', '--no-trunc', '--filter', `reference=${pattern}`, '--format', '{{.ID}}']).split('\n').filter(Boolean);
  return listed.length > 0 ? { id: listed[0], via: 'filter' } : {};
}

/** A real engine on <resin-data>/docker finds every service image as the supervisor would, and runs it. */
async function judgeServices(s: Setup, engineRoot: string): Promise<void> {
  const d = await Dockerd.start({ dataRoot: engineRoot });
  const problems: string[] = [];
  try {
    for (const svc of s.services) {
      const found = supervisorLookup(d, svc.image);
      if (found.id !== svc.expect.id) {
        problems.push(`service ${svc.name}: ${svc.image} resolves to ${found.id ?? 'nothing'}, expected ${svc.expect.id}`);
        continue;
      }
      if (found.via !== svc.via) problems.push(`service ${svc.name}: ${svc.image} resolves by ${found.via}, expected ${svc.via}`);
      const out = d.dockerRaw(['run', '--rm', '--network', 'none', found.id], { timeoutMs: 60_000 });
      if (out.code !== 0 || out.stdout.trim() !== svc.expect.marker) problems.push(`service ${svc.name}: run printed ${JSON.stringify(out.stdout.trim())} (${out.stderr.trim()})`);
    }
  } finally {
    await d.stop();
  }
  assert.deepEqual(problems, [], problems.join('\n'));
  d.cleanup();
}

/** What a preloaded resin-data root must hold besides the engine. */
function judgeResinDataRoot(s: Setup, root: string, what: string): string {
  const text = fs.readFileSync(path.join(root, 'apps.json'), 'utf8');
  assert.deepEqual(JSON.parse(text), s.appsJson, `${what}: apps.json is the v3 form of the state`);
  assert.ok(!fs.existsSync(path.join(root, 'apps.json.preloaded')), `${what}: apps.json.preloaded is never written`);
  assert.ok(fs.statSync(path.join(root, 'remove_me_to_reset')).isFile(), `${what}: remove_me_to_reset is kept`);
  assert.ok(fs.statSync(path.join(root, 'resin-data')).isDirectory(), `${what}: resin-data/ is kept`);
  assert.deepEqual(listDir(root).filter((f) => f.startsWith('.apps.json')), [], `${what}: no temporary apps.json left`);
  return text;
}

test('preload --resin-data: API state, dashboard copy and v3 apps.json give the same apps.json; a real engine finds and runs every service image', T, async () => {
  const s = await getSetup();
  const written: Record<string, { apps: string; repos: string }> = {};
  for (const [form, file] of Object.entries(s.forms)) {
    const root = resinDataCopy(s, `form-${form}`);
    const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', file, '--resin-data', root]);
    assert.equal(r.code, 0, `preload with the ${form} form\n${show(r)}`);
    const apps = judgeResinDataRoot(s, root, form);
    written[form] = { apps, repos: fs.readFileSync(path.join(root, 'docker', 'image', 'overlay2', 'repositories.json'), 'utf8') };
    if (form === 'dashboard') {
      const problems = await verifyInjectedEngineRoot({
        engineRoot: path.join(root, 'docker'),
        sourceRoot: s.fx.sourceRoot,
        injected: s.needed,
        preexisting: [s.fx.supervisor],
        reusedCacheIds: s.reused,
        absentRefs: [...s.fx.images.unselected.refs, ...s.fx.images.base.refs],
        scratchDir: s.work,
      });
      assert.deepEqual(problems, [], problems.join('\n'));
      await judgeServices(s, path.join(root, 'docker'));
    }
  }
  assert.equal(written.api?.apps, written.v3?.apps, 'the API state and the v3 apps.json give the same bytes');
  assert.equal(written.dashboard?.apps, written.v3?.apps, 'the dashboard copy and the v3 apps.json give the same bytes');
  assert.equal(written.api?.repos, written.v3?.repos, 'the same references are added whatever the form');
  assert.equal(written.dashboard?.repos, written.v3?.repos, 'the same references are added whatever the form');
});

test('extract --apps takes exactly the services\' images', T, async () => {
  const s = await getSetup();
  const bundle = path.join(s.work, 'apps.bundle');
  const r = transplant(['extract', '--from', s.fx.sourceRoot, '--apps', s.forms.dashboard, '--output', bundle]);
  assert.equal(r.code, 0, show(r));
  const listed = lsJson(bundle);
  assert.deepEqual(listed.map((i) => i.id).sort(), s.needed.map((i) => i.id).sort(), 'the bundle holds exactly the services\' images');
});

test('preload --apps naming an image the source lacks fails with its name; the target is byte-for-byte unchanged (directory and disk)', T, async () => {
  const s = await getSetup();
  const missing = 'fixture/not-there:1';
  const state = JSON.parse(JSON.stringify(s.appsJson)) as { apps: Record<string, { releases: Record<string, { services: Record<string, { image: string }> }> }> };
  (state.apps[APP]!.releases[RELEASE]!.services['bare-name'] as { image: string }).image = missing;
  const file = path.join(s.userWork, 'apps-missing.json');
  fs.writeFileSync(file, JSON.stringify(state));
  giveToUser(file);

  const root = resinDataCopy(s, 'missing');
  const before = treeDigest(root);
  const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', file, '--resin-data', root]);
  assertOneLineError(r, 'preload --resin-data with a missing image');
  assert.ok(r.stderr.includes(missing), `the error names ${missing}\n${show(r)}`);
  assert.equal(treeDigest(root), before, 'resin-data is unchanged');

  const img = buildImage(s, 'missing.img');
  const sha = sha256File(img);
  const dir = listDir(s.userWork);
  const d = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', file, '--disk', img]);
  assertOneLineError(d, 'preload --disk with a missing image');
  assert.ok(d.stderr.includes(missing), `the error names ${missing}\n${show(d)}`);
  assert.equal(sha256File(img), sha, 'the image is byte-for-byte unchanged');
  assert.deepEqual(listDir(s.userWork), dir, 'nothing left beside the image');
});

test('preload --apps with malformed states: each its own clear error, exit 1, target unchanged', T, async () => {
  const s = await getSetup();
  const root = resinDataCopy(s, 'malformed');
  const before = treeDigest(root);
  const cases: [string, RegExp][] = [
    ['bad-types.json', /not a valid apps\.json target state \(7 problems/],
    ['empty-releases.json', /not a valid apps\.json target state \(1 problem/],
    ['bad-service-names.json', /not a valid apps\.json target state \(2 problems/],
    ['apps-v2.json', /v2 target state/],
  ];
  const firsts: string[] = [];
  for (const [name, want] of cases) {
    const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', path.join(BAD, name), '--resin-data', root]);
    const first = assertErrorFirstLine(r, name);
    assert.match(first, want, `${name}\n${show(r)}`);
    assert.ok(first.includes(name), `the first line names the file\n${show(r)}`);
    firsts.push(first);
  }
  // The details that tell the cases apart.
  const detail = (name: string): string => transplant(['preload', '--from', s.fx.sourceRoot, '--apps', path.join(BAD, name), '--resin-data', root]).stderr;
  assert.match(detail('empty-releases.json'), /releases: must hold exactly one release/);
  assert.match(detail('bad-service-names.json'), /services\._collector: service name is not a valid name/);
  assert.match(detail('bad-types.json'), /\.running: must be true or false/);
  assert.equal(new Set(firsts).size, firsts.length, `each case has its own message:\n${firsts.join('\n')}`);
  // Not JSON at all, and a missing file.
  const notJson = path.join(s.work, 'not.json');
  fs.writeFileSync(notJson, '{"apps": ');
  assertOneLineError(transplant(['preload', '--from', s.fx.sourceRoot, '--apps', notJson, '--resin-data', root]), 'not JSON');
  assertOneLineError(transplant(['preload', '--from', s.fx.sourceRoot, '--apps', path.join(s.work, 'nope.json'), '--resin-data', root]), 'missing --apps file');
  assert.equal(treeDigest(root), before, 'resin-data is unchanged');
});

/** Gives the target's supervisor image another tag (as an older balenaOS release would ship it). */
function retagSupervisor(s: Setup, root: string, tag: string): string {
  const file = path.join(root, 'docker', 'image', 'overlay2', 'repositories.json');
  const json = JSON.parse(fs.readFileSync(file, 'utf8')) as { Repositories: Record<string, Record<string, string>> };
  const [old] = s.fx.supervisor.refs as [string];
  const repo = old.slice(0, old.lastIndexOf(':'));
  const id = json.Repositories[repo]?.[old];
  assert.ok(id, `${old} is in the fixture's repositories.json`);
  json.Repositories[repo] = { [`${repo}:${tag}`]: id };
  fs.writeFileSync(file, JSON.stringify(json));
  return `${repo}:${tag}`;
}

test('the target\'s supervisor version is read from its image and reported; one older than 13 refuses --apps by name before any write (directory and disk)', T, async () => {
  const s = await getSetup();
  // The fixture's supervisor is tagged v17: the state goes in, and --json says which supervisor will load it.
  const ok = resinDataCopy(s, 'supervisor-17');
  const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--resin-data', ok, '--json']);
  assert.equal(r.code, 0, show(r));
  assert.equal((JSON.parse(r.stdout) as { supervisorVersion: unknown }).supervisorVersion, '17', show(r));
  const line = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--resin-data', resinDataCopy(s, 'supervisor-17-line')]);
  assert.match(line.stdout, /apps\.json written \(for supervisor v17\)/, show(line));

  // A supervisor of 12.x loads only the v2 form: refused, naming the supervisor, nothing changed.
  const old = resinDataCopy(s, 'supervisor-12');
  const ref = retagSupervisor(s, old, 'v12.11.0');
  const before = treeDigest(old);
  const o = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--resin-data', old]);
  assertOneLineError(o, 'preload --apps into a target with supervisor 12');
  assert.ok(o.stderr.includes(`supervisor is v12.11.0 (${ref})`) && o.stderr.includes('13.0.0 or later'), show(o));
  assert.equal(treeDigest(old), before, 'resin-data is unchanged');
  // Without --apps there is nothing for the supervisor to load: the images go in, and the version is reported.
  const images = s.needed.flatMap((i) => ['--image', i.refs[0] ?? i.id]);
  const plain = transplant(['preload', '--from', s.fx.sourceRoot, ...images, '--resin-data', old, '--json']);
  assert.equal(plain.code, 0, show(plain));
  assert.equal((JSON.parse(plain.stdout) as { supervisorVersion: unknown }).supervisorVersion, '12.11.0');

  // The same refusal inside a disk image, which stays byte-for-byte unchanged.
  const oldData = resinDataCopy(s, 'supervisor-12-disk');
  retagSupervisor(s, oldData, 'v12.11.0');
  const img = buildImage(s, 'supervisor-12.img', oldData);
  const sha = sha256File(img);
  const dir = listDir(s.userWork);
  const d = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--disk', img]);
  assertOneLineError(d, 'preload --apps --disk with supervisor 12');
  assert.ok(d.stderr.includes('supervisor is v12.11.0'), show(d));
  assert.equal(sha256File(img), sha, 'the image is byte-for-byte unchanged');
  assert.deepEqual(listDir(s.userWork), dir, 'nothing left beside the image');
});

test('preload --static-ip with --resin-boot: the keyfile lands in system-connections/ and NetworkManager accepts it', T, async () => {
  const s = await getSetup();
  const root = resinDataCopy(s, 'static');
  const boot = path.join(s.work, 'static', 'resin-boot');
  fs.mkdirSync(boot, { recursive: true });
  fs.writeFileSync(path.join(boot, 'config.json'), JSON.stringify({ deviceType: AMD64.slug, hostname: 'balena' }));
  fs.writeFileSync(path.join(boot, 'device-type.json'), JSON.stringify({ slug: AMD64.slug, arch: AMD64.arch }));
  const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--resin-data', root, '--resin-boot', boot, '--static-ip', '10.0.0.1/24']);
  assert.equal(r.code, 0, show(r));
  judgeResinDataRoot(s, root, 'with --static-ip');
  const dir = path.join(boot, 'system-connections');
  const files = listDir(dir);
  assert.equal(files.length, 1, `one keyfile in system-connections/: ${files.join(', ')}`);
  const keyfile = fs.readFileSync(path.join(dir, files[0] as string), 'utf8');
  assert.match(keyfile, /^address1=10\.0\.0\.1\/24$/m);
  assert.match(keyfile, /^method=manual$/m);
  assert.match(keyfile, /^interface-name=eth0$/m);
  const nm = nmcliAccepts(keyfile);
  assert.equal(nm.code, 0, `nmcli --offline refuses the keyfile: ${nm.stderr}\n${keyfile}`);
});

/** Everything the issue asks of a preloaded disk image (the engine, apps.json, resin-boot's keyfile). */
async function judgePreloadedImage(s: Setup, img: string, pristine: string, sourceRoot: string): Promise<void> {
  assert.deepEqual(tableProblems(img, 'mbr'), []);
  assertE2fsckClean(img, s.work);
  const boot = sfdiskPartitions(img).find((p) => p.index === 1)!;
  const keyfile = mtoolsRead(img, boot.offset, 'system-connections/static-eth0');
  assert.ok(keyfile !== undefined, 'resin-boot holds system-connections/static-eth0 (mcopy)');
  assert.match(keyfile, /^address1=10\.0\.0\.1\/24$/m);
  const nm = nmcliAccepts(keyfile);
  assert.equal(nm.code, 0, `nmcli --offline refuses the keyfile: ${nm.stderr}\n${keyfile}`);
  assert.ok(mtoolsRead(img, boot.offset, 'config.json') !== undefined, 'config.json is still on resin-boot');
  const fat = extractPartition(img, boot.offset, boot.size, path.join(s.work, 'boot.fat'));
  const fsck = run('fsck.fat', ['-n', fat]);
  fs.rmSync(fat);
  assert.equal(fsck.code, 0, `fsck.fat -n on resin-boot: ${fsck.stdout}${fsck.stderr}`);
  await withMountedData(pristine, s.work, (old) =>
    withMountedData(img, s.work, async (mnt) => {
      judgeResinDataRoot(s, mnt, img);
      const problems = await verifyInjectedEngineRoot({
        engineRoot: path.join(mnt, 'docker'),
        sourceRoot,
        injected: s.needed,
        preexisting: [s.fx.supervisor],
        preexistingRoot: path.join(old, 'docker'),
        reusedCacheIds: s.reused,
        absentRefs: [...s.fx.images.unselected.refs, ...s.fx.images.base.refs],
        scratchDir: s.work,
      });
      assert.deepEqual(problems, [], problems.join('\n'));
      await judgeServices(s, path.join(mnt, 'docker'));
    }), { readOnly: true });
}

let tarball: string | undefined;

/** The device's data root as `tar` on the device would give it: var/lib/docker/ prefix, every xattr (GNU tar). */
function deviceTarball(s: Setup): string {
  if (tarball) return tarball;
  const holder = path.join(s.work, 'device-rootfs');
  copyTree(s.fx.sourceRoot, path.join(holder, 'var', 'lib', 'docker'));
  const file = path.join(s.userWork, 'device.tar.gz');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '-czf', file, '-C', holder, 'var/lib/docker'], { timeoutMs: 300_000 });
  fs.rmSync(holder, { recursive: true, force: true });
  tarball = giveToUser(file);
  return tarball;
}

test('the issue\'s acceptance command: preload --from <device tarball> --apps <dashboard state> --disk <balena.img> --static-ip 10.0.0.1/24, as nobody', T, async () => {
  const s = await getSetup();
  const tarball = deviceTarball(s);
  const img = buildImage(s, 'balena.img');
  const pristine = path.join(s.work, 'balena.img.before');
  runOk('cp', ['--sparse=always', img, pristine]);
  const size = fs.statSync(img).size;
  const dir = listDir(s.userWork);
  const r = transplant(['preload', '--from', tarball, '--apps', s.forms.dashboard, '--disk', img, '--static-ip', '10.0.0.1/24'], { asUser: true });
  assert.equal(r.code, 0, `the acceptance command\n${show(r)}`);
  assert.ok(fs.statSync(img).size > size, 'the image grew');
  assert.deepEqual(listDir(s.userWork), dir, 'no work copy left');
  await judgePreloadedImage(s, img, pristine, s.fx.sourceRoot);
});

test('preload --from <engine root> --disk, then the same state again: the same apps.json, nothing added twice', T, async () => {
  const s = await getSetup();
  const img = buildImage(s, 'balena-root.img');
  const pristine = path.join(s.work, 'balena-root.img.before');
  runOk('cp', ['--sparse=always', img, pristine]);
  // An engine data root is readable by root only: as nobody, one clear line.
  const denied = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.api, '--disk', img], { asUser: true });
  assertOneLineError(denied, 'preload as nobody from a root-only engine root');
  assert.match(denied.stderr, /permission denied/, show(denied));
  const r = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.api, '--disk', img, '--static-ip', '10.0.0.1/24']);
  assert.equal(r.code, 0, show(r));
  const again = transplant(['preload', '--from', s.fx.sourceRoot, '--apps', s.forms.v3, '--disk', img, '--static-ip', '10.0.0.1/24']);
  assert.equal(again.code, 0, `a second preload with the same state\n${show(again)}`);
  const listed = lsJson(img, { asUser: true });
  assert.deepEqual(
    listed.map((i) => i.id).sort(),
    [...s.needed, s.fx.supervisor].map((i) => i.id).sort(),
    'the image holds the services\' images and the supervisor, once each',
  );
  // ls reports, for each service of the image's apps.json, what the supervisor will find.
  const ls = transplant(['ls', img, '--json'], { asUser: true });
  const status = (JSON.parse(ls.stdout) as { appsJson?: { services: { service: string; imageId?: string }[] } }).appsJson;
  assert.ok(status, `ls --json reports the apps.json\n${ls.stdout.slice(0, 2000)}`);
  for (const svc of s.services) {
    assert.equal(status.services.find((x) => x.service === svc.name)?.imageId, svc.expect.id, `ls: service ${svc.name} resolves to ${svc.expect.key}`);
  }
  await judgePreloadedImage(s, img, pristine, s.fx.sourceRoot);
});

test('preload into a flasher image: apps.json, the engine and the keyfile land in the inner image', T, async () => {
  const s = await getSetup();
  const tarball = deviceTarball(s);
  const buildDir = path.join(s.work, `build-${++s.seq}`);
  const inner = buildBalenaImage(path.join(buildDir, 'inner'), 'inner.img', { table: 'mbr', dataMiB: 4, dataDir: s.fx.targetResinData, deviceType: AMD64 });
  const innerBefore = path.join(s.work, 'flasher-inner.before.img');
  runOk('cp', ['--sparse=always', inner.path, innerBefore]);
  const built = buildBalenaImage(buildDir, 'flasher.img', { table: 'mbr', flasher: true, flasherInner: inner.path, deviceType: AMD64 });
  const img = path.join(s.userWork, 'flasher.img');
  fs.renameSync(built.path, img);
  fs.rmSync(buildDir, { recursive: true, force: true });
  giveToUser(img);
  const dir = listDir(s.userWork);
  const r = transplant(['preload', '--from', tarball, '--apps', s.forms.dashboard, '--disk', img, '--static-ip', '10.0.0.1/24'], { asUser: true });
  assert.equal(r.code, 0, `preload into a flasher image\n${show(r)}`);
  assert.deepEqual(listDir(s.userWork), dir, 'no work copy left');
  assert.deepEqual(tableProblems(img, 'mbr'), []);
  const rootA = sfdiskPartitions(img).find((p) => p.index === 2)!;
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
  await judgePreloadedImage(s, innerAfter, innerBefore, s.fx.sourceRoot);
});
