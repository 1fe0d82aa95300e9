/**
 * The balenaOS side: apps.json normalisation and validation, the supervisor's image
 * lookup (judged against a real dockerd 20.10), NetworkManager keyfiles (judged by
 * NetworkManager's own `nmcli --offline`) and writing into resin-boot, in a directory and
 * inside the FAT of MBR and GPT disk images (judged by mtools and fsck.fat).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import {
  normalizeTargetState,
  normalizeTargetStateDetailed,
  serializeAppsJson,
  serviceImages,
  type AppsJson,
} from '../src/balena/apps-json.js';
import {
  lookupLikeSupervisor,
  normaliseLikeSupervisor,
  parseSupervisorName,
  planReferences,
  resolveLikeSupervisor,
  type ImageStoreView,
} from '../src/balena/image-lookup.js';
import { loadsV3AppsJson, supervisorVersionOf } from '../src/balena/supervisor.js';
import { checkKeyfile, keyfileName, parseStaticIp, staticIpKeyfile } from '../src/balena/network.js';
import { FLASHER_BOOT_LABELS, bootLocation, findBootPartition, readBootFile, readBootInfo, writeBootFile, writeSystemConnection } from '../src/balena/boot-partition.js';
import { mergeReferences, type Repositories } from '../src/engine/repositories.js';
import { Dockerd } from './harness/dockerd.js';
import { repoRoot, requireTools, run, runOk } from './harness/exec.js';
import { buildBalenaImage, extractPartition } from './harness/balena-image.js';
import { tempDir } from './harness/fixtures.js';

const FIX = path.join(repoRoot(), 'test', 'fixtures', 'balena');
const loadFixture = (name: string): unknown => JSON.parse(fs.readFileSync(path.join(FIX, name), 'utf8'));

const DEVICE = 'b4a9c1e0f2d34e5f8a7b6c5d4e3f2a1b';
const APP = 'e7f1d3a2c9b84f0e9d6c5b4a3f2e1d0c';
const RELEASE = '3c2a7f8e9d1b4c6a5e0f7d8c9b2a1e4f';
const IMG_A =
  'registry2.balena-cloud.com/v2/9f2e4c1a7b3d5e8f0a6c2b9d4e7f1a3c@sha256:5d41c9a3be2f7c8e1d0b9a4f6e3c2d1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d';
const IMG_B =
  'registry2.balena-cloud.com/v2/0a1b2c3d4e5f60718293a4b5c6d7e8f9@sha256:a3f1e2d4c5b6a7988796a5b4c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90';

function problemsOf(fn: () => unknown): { summary: string; lines: string[] } {
  try {
    fn();
  } catch (e) {
    const [summary, ...lines] = (e as Error).message.split('\n');
    return { summary, lines: lines.map((l) => l.trim()) };
  }
  assert.fail('expected an error');
}

// ---------------------------------------------------------------------------------------
// apps.json

test('apps.json: the API device state, the dashboard copy and a plain v3 apps.json give the same apps.json', () => {
  const fromV3 = normalizeTargetStateDetailed(loadFixture('apps-v3.json'), 'apps-v3.json');
  const fromApi = normalizeTargetStateDetailed(loadFixture('device-state-api.json'), 'device-state-api.json');
  const fromDash = normalizeTargetStateDetailed(loadFixture('dashboard-state.json'), 'dashboard-state.json');
  assert.equal(fromV3.form, 'apps.json');
  assert.equal(fromApi.form, 'device-state');
  assert.equal(fromDash.form, 'dashboard');
  assert.deepEqual(fromApi.dropped, ['name']);
  assert.deepEqual(fromDash.dropped.sort(), ['dependent', 'name']);
  assert.deepEqual(fromV3.dropped, []);
  // The API form has no pinDevice; the others say false, which means the same and is dropped:
  // all three are byte-identical as they are, and with the same option too.
  assert.equal(new Set([fromV3, fromApi, fromDash].map((r) => serializeAppsJson(r.appsJson))).size, 1);
  const texts = [fromV3, fromApi, fromDash].map((r) => serializeAppsJson({ ...r.appsJson, pinDevice: false }));
  assert.equal(texts[0], texts[1]);
  assert.equal(texts[0], texts[2]);
  const parsed = JSON.parse(texts[0]) as AppsJson;
  assert.deepEqual(Object.keys(parsed), ['config', 'apps', 'pinDevice']);
  assert.equal(parsed.config.HOST_CONFIG_gpu_mem, '64');
  assert.equal(parsed.apps[APP].releases[RELEASE].services!.collector.image, IMG_A);
  assert.ok(!('name' in parsed), 'the device name is not part of apps.json');
});

test('apps.json: serialisation is stable, pretty or compact, and normalising its output changes nothing', () => {
  const a = normalizeTargetState(loadFixture('device-state-api.json'), 'api.json', { pinDevice: true });
  const pretty = serializeAppsJson(a);
  const compact = serializeAppsJson(a, { pretty: false });
  assert.ok(pretty.endsWith('}\n') && pretty.includes('\n  "apps": {'));
  assert.ok(!compact.includes('\n'));
  assert.deepEqual(JSON.parse(pretty), JSON.parse(compact));
  assert.equal(serializeAppsJson(normalizeTargetState(JSON.parse(pretty), 'again.json')), pretty);
  assert.equal(JSON.parse(pretty).pinDevice, true);
  // Top-level order is fixed whatever the input order.
  const shuffled = { pinDevice: true, apps: a.apps, config: a.config };
  assert.equal(serializeAppsJson(normalizeTargetState(shuffled, 'shuffled.json')), pretty);
});

test('apps.json: serviceImages lists every service image of the first release of every app', () => {
  const a = normalizeTargetState(loadFixture('dashboard-state.json'), 'dash.json');
  const common = { app: APP, appName: 'sensor-fleet', appClass: 'fleet', isHost: false, release: RELEASE };
  assert.deepEqual(serviceImages(a), [
    { ...common, service: 'collector', image: IMG_A },
    { ...common, service: 'web-ui', image: IMG_B },
  ]);
});

test('apps.json: the supervisor and host apps of an API state are listed, or left out with onlyFleet', () => {
  const api = JSON.parse(JSON.stringify(loadFixture('device-state-api.json'))) as Record<string, any>;
  const supUuid = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
  const supImage = `registry2.balena-cloud.com/v2/${'c'.repeat(32)}@sha256:${'d'.repeat(64)}`;
  api[DEVICE].apps[supUuid] = {
    id: 1667442, name: 'aarch64-supervisor', class: 'app', is_host: false,
    releases: { ['e'.repeat(32)]: { id: 2800001, services: { 'balena-supervisor': { id: 1, image_id: 2, image: supImage, environment: {}, labels: {} } } } },
  };
  const all = normalizeTargetStateDetailed(api, 'api.json');
  assert.deepEqual(serviceImages(all.appsJson).map((s) => [s.service, s.appClass]), [['collector', 'fleet'], ['web-ui', 'fleet'], ['balena-supervisor', 'app']]);
  const fleet = normalizeTargetStateDetailed(api, 'api.json', { onlyFleet: true });
  assert.deepEqual(Object.keys(fleet.appsJson.apps), [APP]);
  assert.deepEqual(fleet.dropped.sort(), [`apps.${supUuid}`, 'name']);
});

test('apps.json: ids given as decimal strings become numbers, as the supervisor decodes them', () => {
  const input = loadFixture('apps-v3.json') as AppsJson;
  const raw = JSON.parse(JSON.stringify(input)) as Record<string, any>;
  raw.apps[APP].id = '2167449';
  raw.apps[APP].releases[RELEASE].services.collector.image_id = '6120334';
  const a = normalizeTargetState(raw, 'strings.json');
  assert.equal(a.apps[APP].id, 2167449);
  assert.equal(a.apps[APP].releases[RELEASE].services!.collector.image_id, 6120334);
});

test('apps.json: wrong types are all reported, each with its JSON path, under a one-line summary', () => {
  const { summary, lines } = problemsOf(() => normalizeTargetState(loadFixture('bad-types.json'), 'bad-types.json'));
  assert.match(summary, /^bad-types\.json: not a valid apps\.json target state \(7 problems/);
  const svc = `$.apps.${APP}.releases["${RELEASE}"].services`;
  assert.deepEqual(lines.sort(), [
    `$.apps.${APP}.id: must be a non-negative integer id`,
    `$.apps.${APP}.name: must be a string of at most 255 characters`,
    `$.config["gpu mem"]: is not a valid config variable name: at most 255 characters, [a-zA-Z_][a-zA-Z0-9_:]*`,
    `${svc}.collector.environment.SAMPLE_RATE: must be a string`,
    `${svc}.collector.environment["2BAD"]: is not a valid variable name: at most 255 characters, [a-zA-Z_][a-zA-Z0-9_]*`,
    `${svc}.collector.running: must be true or false`,
    `${svc}["web-ui"].labels: is required`,
  ].sort());
});

test('apps.json: an app without a release is refused', () => {
  const { summary, lines } = problemsOf(() => normalizeTargetState(loadFixture('empty-releases.json'), 'empty-releases.json'));
  assert.match(summary, /\(1 problem,/);
  assert.equal(lines.length, 1);
  assert.match(lines[0], new RegExp(`^\\$\\.apps\\.${APP}\\.releases: must hold exactly one release`));
});

test('apps.json: bad service names are refused with the supervisor pattern', () => {
  const { lines } = problemsOf(() => normalizeTargetState(loadFixture('bad-service-names.json'), 'bad-service-names.json'));
  assert.equal(lines.length, 2);
  assert.ok(lines.some((l) => l.includes('services._collector: service name is not a valid name')), lines.join('\n'));
  assert.ok(lines.some((l) => l.includes('services["web ui"]: service name is not a valid name')), lines.join('\n'));
});

test('apps.json: image references, label names, volume names and lengths follow the supervisor', () => {
  const raw = JSON.parse(JSON.stringify(loadFixture('apps-v3.json'))) as Record<string, any>;
  const rel = raw.apps[APP].releases[RELEASE];
  rel.services.collector.image = 'registry2.balena-cloud.com/v2/' + 'a'.repeat(250);
  rel.services['web-ui'].image = 'busybox@sha256:short';
  rel.services['web-ui'].labels = { 'has space': '1', "it's": '1' };
  rel.volumes = { 'bad/volume': {} };
  rel.networks = { frontend: 'bridge' };
  raw.apps[APP].name = 'n'.repeat(256);
  raw.apps[APP].class = 'service';
  raw.pinDevice = 'yes';
  const { summary, lines } = problemsOf(() => normalizeTargetState(raw, 'x.json'));
  assert.match(summary, /\(9 problems/);
  for (const want of [
    /services\.collector\.image: must be an image reference of 1 to 255 characters/,
    /services\["web-ui"\]\.image: must be an image reference/,
    /labels\["has space"\]: is not a valid label name/,
    /labels\["it's"\]: is not a valid label name/,
    /volumes\["bad\/volume"\]: volume name is not a valid name/,
    /networks\.frontend: must be an object \(a network\)/,
    new RegExp(`^\\$\\.apps\\.${APP}\\.name: must be a string of at most 255 characters`),
    /\.class: must be "fleet", "app" or "block"/,
    /^\$\.pinDevice: must be true or false/,
  ]) {
    assert.ok(lines.some((l) => want.test(l)), `${want} not in:\n${lines.join('\n')}`);
  }
});

test('apps.json: v2 and legacy formats are refused, saying why they will not work offline', () => {
  assert.throws(
    () => normalizeTargetState(loadFixture('apps-v2.json'), 'apps-v2.json'),
    /^Error: apps-v2\.json: this is a v2 target state \(apps keyed by numeric app id \(2167449\)\); .*cannot load it offline; get the device's v3 state/,
  );
  assert.throws(
    () => normalizeTargetState(loadFixture('apps-legacy.json'), 'apps-legacy.json'),
    /^Error: apps-legacy\.json: is a legacy single-container apps\.json \(a JSON list\); .*placeholder app .*matches no real release/,
  );
  // A v2 state from the dashboard (local.apps keyed by app id) too.
  const v2 = loadFixture('apps-v2.json') as Record<string, unknown>;
  assert.throws(() => normalizeTargetState({ local: { name: 'x', ...v2 }, dependent: {} }, 'dash-v2.json'), /v2 target state/);
  // v2 apps keyed by uuid but still flat (commit/services, no releases).
  const flat = { config: {}, apps: { [APP]: { name: 'x', commit: RELEASE, services: {} } } };
  assert.throws(() => normalizeTargetState(flat, 'flat.json'), /v2 target state \(apps with commit\/services and no releases/);
});

test('apps.json: other shapes are refused with one clear line', () => {
  const api = loadFixture('device-state-api.json') as Record<string, unknown>;
  assert.throws(
    () => normalizeTargetState({ ...api, ['0'.repeat(32)]: api[DEVICE] }, 'two.json'),
    /two\.json: holds the state of 2 devices .*give the state of one device/,
  );
  assert.throws(() => normalizeTargetState({ hello: 'world' }, 'hello.json'), /hello\.json: is neither an apps\.json/);
  assert.throws(() => normalizeTargetState('apps', 's.json'), /s\.json: is not a JSON object/);
  assert.throws(() => normalizeTargetState({ local: 3 }, 'l.json'), /"local" is not an object/);
  assert.throws(() => normalizeTargetState({ config: {}, apps: {} }, 'empty.json'), /holds no apps and no config/);
  const v3 = loadFixture('apps-v3.json') as AppsJson;
  const block = JSON.parse(JSON.stringify(v3)) as AppsJson;
  block.apps[APP].class = 'block';
  assert.throws(() => normalizeTargetState(block, 'b.json', { pinDevice: true }), /pinDevice: is true but no app has class "fleet"/);
  // false means the same as absent to the supervisor, so it is not written.
  assert.equal(normalizeTargetState(block, 'b.json', { pinDevice: false }).pinDevice, undefined);
  // Config alone is a valid preload (the supervisor applies it).
  assert.deepEqual(normalizeTargetState({ config: { SUPERVISOR_DELTA: '1' } }, 'c.json'), { config: { SUPERVISOR_DELTA: '1' }, apps: {} });
});

// ---------------------------------------------------------------------------------------
// The supervisor's image lookup

const hex = (s: string, n = 64) => createHash('sha256').update(s).digest('hex').slice(0, n);
const ID = (s: string) => `sha256:${hex('image ' + s)}`;
const CLOUD_A = `registry2.balena-cloud.com/v2/${hex('repo A', 32)}`;
const CLOUD_B = `registry2.balena-cloud.com/v2/${hex('repo B', 32)}`;
const DIGEST_A = `sha256:${hex('manifest A')}`;
const DIGEST_B = `sha256:${hex('manifest B')}`;
const DIGEST_B2 = `sha256:${hex('manifest B2')}`;
const DIGEST_SUP = `sha256:${hex('manifest supervisor')}`;

/** repositories.json as a balenaOS device holds it after pulls and a balena-preload. */
function realisticRepositories(): Repositories {
  return {
    'balena/aarch64-supervisor': {
      'balena/aarch64-supervisor:v16.7.8': ID('supervisor'),
      [`balena/aarch64-supervisor@${DIGEST_SUP}`]: ID('supervisor'),
    },
    [CLOUD_A]: {
      [`${CLOUD_A}@${DIGEST_A}`]: ID('A'),
      [`${CLOUD_A}:latest`]: ID('A'),
    },
    // Only a tag: a digest name of this repository resolves through the reference filter.
    [CLOUD_B]: { [`${CLOUD_B}:latest`]: ID('B') },
    busybox: { 'busybox:latest': ID('busybox'), 'busybox:1.36': ID('busybox') },
    'myorg/app': { 'myorg/app:v1': ID('app v1'), 'myorg/app:v2': ID('app v2') },
    'localhost:5000/tools': { 'localhost:5000/tools:dev': ID('tools') },
    // A reference whose image is not in imagedb (deleted by hand): never resolves.
    ghost: { 'ghost:latest': ID('ghost') },
  };
}

function realisticStore(): ImageStoreView {
  const ids = ['supervisor', 'A', 'B', 'busybox', 'app v1', 'app v2', 'tools', 'dangling'].map(ID);
  return {
    repositories: realisticRepositories(),
    imageIds: new Set(ids),
    created: new Map([
      [ID('app v1'), 1_700_000_000_000],
      [ID('app v2'), 1_700_000_500_000],
    ]),
  };
}

/** name -> [expected image, how] (undefined: the supervisor would abandon the preload). */
const LOOKUP_CASES: Array<[string, string | undefined, string | undefined]> = [
  [`${CLOUD_A}@${DIGEST_A}`, ID('A'), 'exact'],
  [`${CLOUD_A}:v9@${DIGEST_A}`, ID('A'), 'exact'], // the tag is dropped
  [`${CLOUD_A}@${DIGEST_B}`, ID('A'), 'reference-filter'], // another digest: any ref of the repo matches
  [`${CLOUD_B}@${DIGEST_B}`, ID('B'), 'reference-filter'],
  [CLOUD_B, ID('B'), 'exact'],
  [`${CLOUD_B}:v2`, undefined, undefined],
  [`registry2.balena-cloud.com/v2/${hex('repo C', 32)}@${DIGEST_A}`, undefined, undefined],
  ['busybox', ID('busybox'), 'exact'],
  ['busybox:1.36', ID('busybox'), 'exact'],
  ['docker.io/library/busybox', ID('busybox'), 'exact'], // the engine normalises the name
  ['index.docker.io/library/busybox:1.36', ID('busybox'), 'exact'],
  ['library/busybox:latest', ID('busybox'), 'exact'],
  // With a digest not held, the filter pattern keeps docker.io/library/ and the engine does not normalise it.
  [`docker.io/library/busybox@${DIGEST_B}`, undefined, undefined],
  [`busybox@${DIGEST_B}`, ID('busybox'), 'reference-filter'],
  ['busybox:1.35', undefined, undefined],
  ['myorg/app:v1', ID('app v1'), 'exact'],
  [`myorg/app@${DIGEST_A}`, ID('app v2'), 'reference-filter'], // newest of the two
  ['myorg/app', undefined, undefined],
  ['localhost:5000/tools:dev', ID('tools'), 'exact'],
  ['localhost:5000/tools', undefined, undefined],
  ['ghost', undefined, undefined],
  [ID('dangling'), ID('dangling'), 'image-id'],
  [ID('missing'), undefined, undefined],
  ['BusyBox', undefined, undefined], // upper case: the engine refuses the name
  ['balena/aarch64-supervisor:v16.7.8', ID('supervisor'), 'exact'],
];

test('supervisor version: from the tag of a supervisor repository, else the VERSION its image sets; other images have none', () => {
  const env = (v: string): string => JSON.stringify({ config: { Env: ['PATH=/usr/bin', `VERSION=${v}`] } });
  const cases: [string[], string | undefined, string | undefined][] = [
    [['balena/amd64-supervisor:v14.11.4'], undefined, '14.11.4'],
    [['resin/armv7hf-supervisor:v7.4.3'], undefined, '7.4.3'],
    [['balena/aarch64-supervisor:v17'], undefined, '17'],
    [['balena_supervisor:v16.1.0'], undefined, '16.1.0'],
    [['balena_supervisor:latest'], env('v15.2.0'), '15.2.0'],
    [['registry2.balena-cloud.com/v2/abc/amd64-supervisor@sha256:' + 'a'.repeat(64)], env('14.0.1'), '14.0.1'],
    [['balena_supervisor:latest'], undefined, undefined],
    [['myapp:v14.1.0'], env('14.1.0'), undefined],
    [['supervisorish/app:v1.0.0'], undefined, undefined],
  ];
  for (const [refs, config, want] of cases) assert.equal(supervisorVersionOf(refs, config)?.version, want, refs.join(' '));
  const old = supervisorVersionOf(['balena/amd64-supervisor:v12.11.0'], undefined);
  assert.ok(old && !loadsV3AppsJson(old), '12.11.0 cannot load a v3 apps.json');
  for (const v of ['v13.0.0', 'v14.11.4', 'v17']) assert.ok(loadsV3AppsJson(supervisorVersionOf([`balena/amd64-supervisor:${v}`], undefined)!), v);
});

test('image lookup: the supervisor\'s normalisation', () => {
  assert.equal(normaliseLikeSupervisor('busybox'), 'busybox:latest');
  assert.equal(normaliseLikeSupervisor(`${CLOUD_A}:latest@${DIGEST_A}`), `${CLOUD_A}@${DIGEST_A}`);
  assert.equal(normaliseLikeSupervisor('localhost:5000/tools'), 'localhost:5000/tools:latest');
  assert.equal(normaliseLikeSupervisor('docker.io/library/busybox'), 'docker.io/library/busybox:latest');
  assert.deepEqual(parseSupervisorName('my.registry:5000/a/b:v1'), { repository: 'my.registry:5000/a/b', tag: 'v1', digest: undefined });
  assert.throws(() => parseSupervisorName('busybox@sha256:xyz'), /invalid image name/);
});

test('image lookup: realistic repositories.json content resolves as the supervisor would', () => {
  const store = realisticStore();
  for (const [name, id, via] of LOOKUP_CASES) {
    const r = lookupLikeSupervisor(name, store);
    assert.equal(r.imageId, id, `${name}: ${JSON.stringify(r)}`);
    assert.equal(r.via, via, name);
    assert.equal(resolveLikeSupervisor(name, store), id);
  }
  assert.deepEqual(lookupLikeSupervisor(`myorg/app@${DIGEST_A}`, store).alsoMatched, [ID('app v1')]);
});

/** GET over the engine's unix socket. */
function engineGet(socket: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: urlPath, method: 'GET', timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`engine did not answer GET ${urlPath}`)));
    req.end();
  });
}

/** The supervisor's inspectByURI then inspectByReference, asked of a real engine. */
async function engineLookup(socket: string, name: string): Promise<string | undefined> {
  let normalised: string;
  try {
    normalised = normaliseLikeSupervisor(name);
  } catch {
    return undefined;
  }
  const byUri = await engineGet(socket, `/v1.41/images/${encodeURIComponent(normalised)}/json`);
  if (byUri.status === 200) return (JSON.parse(byUri.body) as { Id: string }).Id;
  const sup = parseSupervisorName(normalised);
  const pattern = sup.digest !== undefined ? sup.repository : `${sup.repository}:${sup.tag ?? 'latest'}`;
  const filters = encodeURIComponent(JSON.stringify({ reference: [pattern] }));
  const list = await engineGet(socket, `/v1.41/images/json?digests=1&filters=${filters}`);
  if (list.status !== 200) return undefined;
  const images = JSON.parse(list.body) as Array<{ Id: string }>;
  return images[0]?.Id;
}

test('image lookup: agrees with a real dockerd 20.10 asked the supervisor\'s questions', async () => {
  requireTools('tar');
  const work = tempDir('tp-lookup-');
  const root = path.join(work, 'root');
  const ctx = path.join(work, 'ctx');
  fs.mkdirSync(ctx);
  const imported: Record<string, string> = {};
  let d = await Dockerd.start({ dataRoot: root });
  try {
    // Distinct images, created at least a second apart (the engine sorts by Created seconds).
    for (const key of ['A', 'B', 'busybox', 'app v1', 'app v2', 'tools', 'supervisor', 'dangling']) {
      fs.writeFileSync(path.join(ctx, 'marker'), key);
      const tarball = path.join(work, 'layer.tar');
      runOk('tar', ['-C', ctx, '-cf', tarball, 'marker']);
      imported[key] = d.docker(['import', tarball]).trim();
      if (key === 'app v1') await new Promise((r) => setTimeout(r, 1100));
    }
  } finally {
    await d.stop();
  }
  // Lay the realistic references over the real image IDs, with the engine stopped.
  const rename = (id: string): string => {
    const key = Object.keys(imported).find((k) => ID(k) === id);
    return key ? imported[key] : id;
  };
  const repos: Repositories = {};
  for (const [repo, refs] of Object.entries(realisticRepositories())) {
    repos[repo] = Object.fromEntries(Object.entries(refs).map(([k, id]) => [k, rename(id)]));
  }
  const reposFile = path.join(root, 'image', 'overlay2', 'repositories.json');
  fs.writeFileSync(reposFile, JSON.stringify({ Repositories: repos }));
  const store: ImageStoreView = {
    repositories: repos,
    imageIds: new Set(Object.values(imported)),
    created: new Map([
      [imported['app v1'], 1],
      [imported['app v2'], 2],
    ]),
  };
  d = await Dockerd.start({ dataRoot: root });
  try {
    const names = LOOKUP_CASES.map(([name]) => name.replace(ID('dangling'), imported.dangling).replace(ID('missing'), ID('not there')));
    let compared = 0;
    for (const name of names) {
      const engine = await engineLookup(d.socket, name);
      assert.equal(resolveLikeSupervisor(name, store), engine, `lookup of ${name}`);
      compared++;
    }
    assert.equal(compared, LOOKUP_CASES.length);
    // The cases above must include both outcomes, or the comparison proves little.
    const outcomes = await Promise.all(names.map((n) => engineLookup(d.socket, n)));
    assert.ok(outcomes.filter((o) => o === undefined).length >= 5 && outcomes.filter((o) => o !== undefined).length >= 10);
  } finally {
    await d.stop();
  }
});

test('image lookup: the planner says what resolves, what a reference fixes, and what is missing', () => {
  const store = realisticStore();
  const digestElsewhere = `${CLOUD_B}@${DIGEST_B2}`; // repo B holds only :latest -> filter would do, but the source has the digest
  const source: ImageStoreView = {
    repositories: {
      'myorg/sensor': { 'myorg/sensor:1.0': ID('sensor'), [`myorg/sensor@${DIGEST_B2}`]: ID('sensor') },
      'myorg/ui': { 'myorg/ui:3': ID('ui') },
      [CLOUD_A]: { [`${CLOUD_A}@${DIGEST_A}`]: ID('A') },
    },
    imageIds: new Set([ID('sensor'), ID('ui'), ID('A')]),
  };
  const cloudC = `registry2.balena-cloud.com/v2/${hex('repo C', 32)}@${DIGEST_SUP}`;
  const mapped = `registry2.balena-cloud.com/v2/${hex('repo D', 32)}@${DIGEST_A.replace(/.$/, '0')}`;
  const names = [
    `${CLOUD_A}@${DIGEST_A}`, // resolves
    digestElsewhere, // same manifest digest under myorg/sensor in the source -> add reference + image
    cloudC, // same digest as the supervisor in the target -> add reference only
    mapped, // mapped by the user to myorg/ui:3 (source)
    'myorg/ui:3', // exact in the source
    `myorg/app@${DIGEST_B}`, // filter matches two images -> refused
    'nothere:1', // missing
    `${CLOUD_A}@${DIGEST_A}`, // duplicate, listed once
  ];
  const r = planReferences(names, store, source, { map: { [mapped]: 'myorg/ui:3' } });
  assert.equal(r.plans.length, 7);
  const by = (n: string) => r.plans.find((p) => p.name === n)!;
  assert.deepEqual(by(names[0]), { status: 'resolves', name: names[0], imageId: ID('A'), via: 'exact' });
  assert.deepEqual(
    { ...by(digestElsewhere), reason: undefined },
    { status: 'add-reference', name: digestElsewhere, key: digestElsewhere, imageId: ID('sensor'), needsImage: true, reason: undefined },
  );
  assert.match((by(digestElsewhere) as { reason: string }).reason, /source holds manifest digest/);
  assert.equal(by(cloudC).status, 'add-reference');
  assert.equal((by(cloudC) as { imageId: string }).imageId, ID('supervisor'));
  assert.equal((by(cloudC) as { needsImage: boolean }).needsImage, false);
  assert.equal((by(mapped) as { imageId: string }).imageId, ID('ui'));
  assert.match((by(mapped) as { reason: string }).reason, /mapped to myorg\/ui:3/);
  assert.equal(by('myorg/ui:3').status, 'add-reference');
  assert.equal(by(`myorg/app@${DIGEST_B}`).status, 'missing');
  assert.match((by(`myorg/app@${DIGEST_B}`) as { message: string }).message, /matches 2 images by repository only.*map it/);
  assert.match((by('nothere:1') as { message: string }).message, /^service image nothere:1 is neither in the target nor in the source \(looked up as nothere:1\)/);
  assert.equal(r.errors.length, 2);
  assert.deepEqual(r.imagesNeeded, [ID('sensor'), ID('ui')].sort());
  assert.equal(r.additions.length, 4);

  // Applying the additions (and bringing the needed images) makes every planned name resolve exactly.
  const merged = mergeReferences(store.repositories, r.additions);
  const after: ImageStoreView = { repositories: merged.repositories, imageIds: new Set([...store.imageIds, ...r.imagesNeeded]) };
  for (const p of r.plans) {
    if (p.status === 'missing') continue;
    const l = lookupLikeSupervisor(p.name, after);
    assert.equal(l.imageId, p.imageId, p.name);
    if (p.status === 'add-reference') assert.equal(l.via, 'exact', p.name);
  }
});

test('image lookup: the planner refuses contradicting mappings, unknown mapping targets and bad names', () => {
  const store = realisticStore();
  const r = planReferences(['busybox:latest', 'newname:1', 'Bad Name', ''], store, undefined, {
    map: { busybox: 'myorg/app:v1', 'newname:1': 'sha256:' + '0'.repeat(64) },
  });
  assert.equal(r.errors.length, 4, r.errors.join('\n'));
  assert.match(r.errors[0], /busybox:latest already names image .* but it was mapped to myorg\/app:v1/);
  assert.match(r.errors[1], /newname:1 was mapped to sha256:0+, which names no image/);
  assert.match(r.errors[2], /"Bad Name" (is not a valid image name|cannot be looked up)/);
  assert.match(r.errors[3], /"" is not a valid image name/);
  // A mapping by short ID works.
  const ok = planReferences(['newname:1'], store, undefined, { map: { 'newname:1': ID('tools').slice(7, 19) } });
  assert.deepEqual(ok.errors, []);
  assert.deepEqual(ok.additions, [{ key: 'newname:1', imageId: ID('tools') }]);
  // Two different images holding one manifest digest (a list pulled for two platforms) are refused.
  const twice: ImageStoreView = {
    repositories: { a: { [`a@${DIGEST_A}`]: ID('arm') }, b: { [`b@${DIGEST_A}`]: ID('amd') } },
    imageIds: new Set([ID('arm'), ID('amd')]),
  };
  assert.match(planReferences([`c@${DIGEST_A}`], twice).errors[0], /names 2 different images in the target/);
  // A stale digest reference (its image gone from imagedb) cannot be re-pointed.
  const stale: ImageStoreView = {
    repositories: { c: { [`c@${DIGEST_A}`]: ID('gone') }, a: { [`a@${DIGEST_A}`]: ID('arm') } },
    imageIds: new Set([ID('arm')]),
  };
  assert.match(planReferences([`c@${DIGEST_A}`], stale).errors[0], /already maps c@sha256:[0-9a-f]+ to sha256:[0-9a-f]+, which is not in its imagedb/);
});

// ---------------------------------------------------------------------------------------
// NetworkManager keyfiles

/** NetworkManager's own keyfile reader and verifier (Debian package network-manager, nmcli >= 1.42 --offline). */
function nmcli(keyfile: string): { code: number; stdout: string; stderr: string } {
  requireTools('nmcli');
  const id = /^id=(.*)$/m.exec(keyfile)?.[1] ?? 'x';
  return run('nmcli', ['--offline', 'connection', 'modify', 'connection.id', id], { input: keyfile, timeoutMs: 20_000 });
}

const STATIC_ETH0 = `[connection]
id=static-eth0
type=ethernet
interface-name=eth0
autoconnect=true

[ethernet]

[ipv4]
address1=192.168.1.50/24,192.168.1.1
method=manual

[ipv6]
method=auto
`;

test('keyfile: --static-ip builds the documented keyfile, and NetworkManager accepts it', () => {
  const k = staticIpKeyfile({ specs: '192.168.1.50/24,192.168.1.1' });
  assert.equal(k.id, 'static-eth0');
  assert.equal(k.fileName, 'static-eth0');
  assert.equal(k.content, STATIC_ETH0);
  const nm = nmcli(k.content);
  assert.equal(nm.code, 0, nm.stderr);
  assert.match(nm.stdout, /^address1=192\.168\.1\.50\/24,192\.168\.1\.1$/m);
  assert.match(nm.stdout, /^interface-name=eth0$/m);
});

test('keyfile: IPv6, dual stack, DNS and another interface are accepted by NetworkManager', () => {
  const cases = [
    staticIpKeyfile({ specs: 'fd12:3456:789a::50/64,fd12:3456:789a::1', interfaceName: 'wlan0' }),
    staticIpKeyfile({ specs: ['10.20.0.7/16,10.20.0.1', '2001:db8::7/64,fe80::1'], dns: ['10.20.0.1', '2001:db8::53'], interfaceName: 'enp1s0' }),
    staticIpKeyfile({ specs: '100.64.3.9/32', id: 'My office / lab' }),
  ];
  assert.equal(cases[1].fileName, 'static-enp1s0');
  assert.equal(cases[2].fileName, 'My_office___lab');
  for (const k of cases) {
    const nm = nmcli(k.content);
    assert.equal(nm.code, 0, `${k.content}\n${nm.stderr}`);
    for (const line of k.content.split('\n').filter((l) => l.startsWith('address1=') || l.startsWith('dns='))) {
      assert.ok(nm.stdout.includes(line), `NetworkManager lost ${line}:\n${nm.stdout}`);
    }
    assert.equal(checkKeyfile(k.content, 'generated').id, k.id);
  }
});

test('keyfile: bad --static-ip values are refused with one clear line', () => {
  const bad: Array<[string, RegExp]> = [
    ['192.168.1.50', /expected <address>\/<prefix>\[,<gateway>\]/],
    ['192.168.1.500/24', /not an IPv4 or IPv6 address/],
    ['192.168.1.50/33', /prefix \/33 is out of range \(1-32 for IPv4\)/],
    ['192.168.1.50/0', /prefix \/0 is out of range/],
    ['fd00::1/129', /prefix \/129 is out of range \(1-128 for IPv6\)/],
    ['192.168.1.0/24', /network address of its subnet/],
    ['192.168.1.255/24', /broadcast address of its subnet/],
    ['127.0.0.5/8', /loopback/],
    ['224.0.0.5/24', /multicast/],
    ['192.168.1.50/24,192.168.2.1', /gateway 192\.168\.2\.1 is outside 192\.168\.1\.50\/24/],
    ['192.168.1.50/24,fd00::1', /gateway fd00::1 is not IPv4 like the address/],
    ['192.168.1.50/24,192.168.1.50', /the gateway is the address itself/],
    ['fd00::5/64,::', /gateway :: is not a usable address/],
    ['ff02::1/64', /multicast/],
    ['fe80::1%eth0/64', /not an IPv4 or IPv6 address|zone index/],
  ];
  for (const [spec, re] of bad) {
    assert.throws(() => parseStaticIp(spec), (e: Error) => re.test(e.message) && !e.message.includes('\n') && e.message.startsWith(`--static-ip ${spec}`), spec);
  }
  assert.throws(() => staticIpKeyfile({ specs: ['10.0.0.2/24', '10.0.0.3/24'] }), /two IPv4 addresses/);
  assert.throws(() => staticIpKeyfile({ specs: '10.0.0.2/24', interfaceName: 'a-very-long-ifname0' }), /not a valid interface name/);
  assert.throws(() => staticIpKeyfile({ specs: '10.0.0.2/24', interfaceName: 'eth/0' }), /not a valid interface name/);
  assert.throws(() => staticIpKeyfile({ specs: '10.0.0.2/24', dns: ['dns.google'] }), /--dns dns\.google: not an IPv4 or IPv6 address/);
  assert.deepEqual(parseStaticIp('2001:db8::7/64,fe80::1'), { family: 6, address: '2001:db8::7', prefix: 64, gateway: 'fe80::1' });
  assert.deepEqual(parseStaticIp('100.64.3.9/32,100.64.0.1'), { family: 4, address: '100.64.3.9', prefix: 32, gateway: '100.64.0.1' });
});

const WIFI = `# balenaOS wifi, as in the docs
[connection]
id=balena-wifi
type=wifi

[wifi]
hidden=true
mode=infrastructure
ssid=My Office

[wifi-security]
auth-alg=open
key-mgmt=wpa-psk
psk=correct horse battery

[ipv4]
method=auto

[ipv6]
addr-gen-mode=stable-privacy
method=auto
`;

test('keyfile: a user keyfile is checked; good ones pass unchanged, as NetworkManager agrees', () => {
  for (const [text, fileName] of [
    [WIFI, 'balena-wifi'],
    [STATIC_ETH0, 'static-eth0'],
    ['[connection]\nid=cellular\ntype=gsm\nautoconnect=true\n\n[gsm]\napn=internet\n\n[ipv4]\nmethod=auto\n', 'cellular'],
    ['[connection]\nid=.hidden.ignore\ntype=802-3-ethernet\n[ipv4]\nmethod=shared\naddress1=10.42.0.1/24\n', '_hidden.ignore_'],
  ] as const) {
    const k = checkKeyfile(text, 'user.nmconnection');
    assert.equal(k.content, text);
    assert.equal(k.fileName, fileName);
    const nm = nmcli(text);
    assert.equal(nm.code, 0, `NetworkManager refused what we accepted:\n${text}\n${nm.stderr}`);
  }
});

test('keyfile: bad user keyfiles are refused with a clear error, and NetworkManager refuses them too', () => {
  // NetworkManager itself takes a missing id from the file name; we need it to name the file.
  assert.throws(() => checkKeyfile('[connection]\ntype=ethernet\n', 'user.conf'), /\[connection\] id is missing or empty/);
  const bad: Array<[string, RegExp]> = [
    ['[ipv4]\nmethod=auto\n', /has no \[connection\] group; not a NetworkManager keyfile/],
    ['[connection]\nid=x\ntype=ethernt\n', /type=ethernt is not a NetworkManager connection type/],
    ['[connection]\nid=x\ntype=ethernet\n[ipv4]\nmethod=manual\n', /\[ipv4\] method=manual needs at least one address/],
    ['[connection]\nid=x\ntype=ethernet\n[ipv4]\nmethod=static\naddress1=10.0.0.2/24\n', /\[ipv4\] method=static is not one of/],
    ['[connection]\nid=x\ntype=ethernet\n[ipv4]\nmethod=manual\naddress1=10.0.0.300/24\n', /address1=10\.0\.0\.300\/24 is not an IPv4 address/],
    ['[connection]\nid=x\ntype=ethernet\n[ipv6]\nmethod=manual\naddress1=10.0.0.3/24\n', /\[ipv6\] address1=10\.0\.0\.3\/24 is not an IPv6 address/],
    ['[connection]\nid=x\ntype=ethernet\n[ipv6]\nmethod=ignore\naddress1=fd00::3/64\n', /addresses are not allowed with method=ignore/],
    ['[connection]\nid=x\ntype=wifi\n[wifi]\nmode=infrastructure\n', /\[wifi\] ssid is required/],
    ['[connection]\nid=x\ntype=bridge\n', /interface-name is required for type=bridge/],
    ['[connection]\nid=x\ntype=ethernet\ninterface-name=this-name-is-too-long\n', /interface-name .* is not a valid interface name/],
    ['[connection]\nid=x\ntype=ethernet\nthis line is wrong\n', /user\.conf:4: "this line is wrong" is neither a \[group\]/],
    ['[connection\nid=x\n', /user\.conf:1: malformed group line/],
    ['id=x\n[connection]\ntype=ethernet\n', /user\.conf:1: key=value before the first \[group\]/],
  ];
  for (const [text, re] of bad) {
    assert.throws(() => checkKeyfile(text, 'user.conf'), (e: Error) => re.test(e.message), `${re} for:\n${text}`);
    const nm = nmcli(text);
    assert.notEqual(nm.code, 0, `NetworkManager accepted what we refuse:\n${text}`);
  }
  // Several problems at once: all listed under one summary line.
  const many = checkKeyfileProblems('[connection]\ntype=bogus\nuuid=nope\n[ipv4]\nmethod=manual\n');
  assert.match(many[0], /user\.conf: is not a usable NetworkManager keyfile \(4 problems\):/);
  assert.equal(many.length, 5);
  assert.throws(() => checkKeyfile('[connection]\nid=x\nid=y\ntype=ethernet\n', 'dup.conf'), /dup\.conf:3: \[connection\] id is given twice/);
  assert.equal(keyfileName('office wifi (5GHz)'), 'office_wifi__5GHz_');
});

function checkKeyfileProblems(text: string): string[] {
  try {
    checkKeyfile(text, 'user.conf');
  } catch (e) {
    return (e as Error).message.split('\n');
  }
  return [];
}

// ---------------------------------------------------------------------------------------
// resin-boot

function mtoolsRead(img: string, offset: number, file: string): { code: number; stdout: string; stderr: string } {
  requireTools('mcopy');
  return run('mcopy', ['-n', '-i', `${img}@@${offset}`, `::/${file}`, '-'], { env: { MTOOLS_SKIP_CHECK: '1' } });
}

function fsckFat(img: string, offset: number, size: number, work: string): void {
  requireTools('fsck.fat');
  const part = extractPartition(img, offset, size, path.join(work, 'boot.fat'));
  const r = run('fsck.fat', ['-n', part]);
  assert.equal(r.code, 0, `fsck.fat: ${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /differ|wrong|Free cluster/i, r.stdout);
  fs.rmSync(part);
}

/** sha256 of the image outside [offset, offset+size): what writing into resin-boot must not change. */
function hashOutside(img: string, offset: number, size: number): string {
  const h = createHash('sha256');
  const fd = fs.openSync(img, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    const total = fs.fstatSync(fd).size;
    for (let at = 0; at < total; ) {
      const end = at < offset ? Math.min(offset, at + buf.length) : Math.min(total, at + buf.length);
      const n = fs.readSync(fd, buf, 0, end - at, at);
      h.update(buf.subarray(0, n));
      at += n;
      if (at === offset) at = offset + size;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

test('resin-boot directory: the static-IP keyfile lands in system-connections/, atomically and once', async () => {
  const boot = tempDir('tp-boot-dir-');
  await assert.rejects(bootLocation(boot), /does not look like a mounted resin-boot \(no config\.json or device-type\.json\)/);
  fs.writeFileSync(path.join(boot, 'config.json'), JSON.stringify({ deviceType: 'raspberrypi4-64', uuid: DEVICE }));
  fs.writeFileSync(path.join(boot, 'device-type.json'), JSON.stringify({ slug: 'raspberrypi4-64', arch: 'aarch64' }));
  const loc = await bootLocation(boot);
  assert.equal(loc.kind, 'directory');
  const k = staticIpKeyfile({ specs: '192.168.1.50/24,192.168.1.1' });
  const first = await writeSystemConnection(loc, k);
  assert.deepEqual(first, { where: `${boot}/system-connections/static-eth0`, unchanged: false, replaced: false });
  const file = path.join(boot, 'system-connections', 'static-eth0');
  assert.equal(fs.readFileSync(file, 'utf8'), STATIC_ETH0);
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(fs.readdirSync(path.join(boot, 'system-connections')), ['static-eth0'], 'no temporary file left');
  assert.equal((await writeSystemConnection(loc, k)).unchanged, true);
  const other = staticIpKeyfile({ specs: '192.168.1.51/24,192.168.1.1' });
  await assert.rejects(writeSystemConnection(loc, other), /static-eth0 already exists with other content/);
  assert.equal(fs.readFileSync(file, 'utf8'), STATIC_ETH0);
  assert.equal((await writeSystemConnection(loc, other, { overwrite: true })).replaced, true);
  assert.equal(fs.readFileSync(file, 'utf8'), other.content);
  assert.deepEqual(await readBootInfo(loc), {
    slug: 'raspberrypi4-64',
    arch: 'aarch64',
    deviceType: { slug: 'raspberrypi4-64', arch: 'aarch64' },
    config: { deviceType: 'raspberrypi4-64', uuid: DEVICE },
  });
  fs.writeFileSync(path.join(boot, 'config.json'), '{"deviceType": ');
  await assert.rejects(readBootInfo(loc), new RegExp(`${boot}/config\\.json: is not valid JSON`));
  await assert.rejects(bootLocation(path.join(boot, 'nope')), /does not exist; give a mounted resin-boot directory or a balenaOS disk image/);
});

for (const table of ['mbr', 'gpt'] as const) {
  test(`resin-boot in a ${table.toUpperCase()} disk image: the keyfile is written into the FAT without mounting`, async () => {
    const work = tempDir(`tp-boot-${table}-`);
    const img = buildBalenaImage(work, `balena-${table}.img`, { table, deviceType: { slug: 'genericx86-64-ext', arch: 'amd64' } });
    const boot = img.partitions.find((p) => p.label === 'resin-boot')!;
    const before = hashOutside(img.path, boot.offset, boot.size);
    const found = await findBootPartition(img.path);
    assert.deepEqual(found, { index: boot.index, offset: boot.offset, size: boot.size, table });

    const loc = await bootLocation(img.path);
    assert.equal(loc.kind, 'image');
    const info = await readBootInfo(loc);
    assert.equal(info.slug, 'genericx86-64-ext');
    assert.equal(info.arch, 'amd64');
    assert.equal(info.config?.deviceType, 'genericx86-64-ext');

    const k = staticIpKeyfile({ specs: '10.0.0.5/24,10.0.0.1' });
    assert.equal((await writeSystemConnection(loc, k)).where, `${img.path}:resin-boot/system-connections/static-eth0`);
    const wifi = checkKeyfile(WIFI, 'wifi.nmconnection');
    await writeSystemConnection(loc, wifi);
    const back = mtoolsRead(img.path, boot.offset, 'system-connections/static-eth0');
    assert.equal(back.code, 0, back.stderr);
    assert.equal(back.stdout, k.content);
    assert.equal(mtoolsRead(img.path, boot.offset, 'system-connections/balena-wifi').stdout, WIFI);
    const nm = nmcli(back.stdout);
    assert.equal(nm.code, 0, nm.stderr);
    assert.equal(mtoolsRead(img.path, boot.offset, 'config.json').code, 0, 'config.json still there');
    fsckFat(img.path, boot.offset, boot.size, work);

    // Same content again: nothing written. Other content: refused, then replaced when allowed (shorter file).
    assert.equal((await writeSystemConnection(loc, k)).unchanged, true);
    const other = staticIpKeyfile({ specs: '10.0.0.6/8' });
    await assert.rejects(writeSystemConnection(loc, other), /already exists with other content/);
    assert.equal((await writeSystemConnection(loc, other, { overwrite: true })).replaced, true);
    assert.equal(mtoolsRead(img.path, boot.offset, 'system-connections/static-eth0').stdout, other.content);
    assert.equal((await readBootFile(loc, 'system-connections/static-eth0'))?.toString('utf8'), other.content);
    fsckFat(img.path, boot.offset, boot.size, work);
    assert.equal(hashOutside(img.path, boot.offset, boot.size), before, 'bytes outside resin-boot changed');
  });
}

test('resin-boot in a disk image is found by label, not number (FAT32 p2 behind another FAT p1)', async () => {
  requireTools('sfdisk', 'mkfs.vfat', 'mcopy', 'dd');
  const work = tempDir('tp-boot-label-');
  const img = path.join(work, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 56 * 1024 * 1024);
  runOk('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', img], { input: 'label: dos\nstart=2048, size=8192, type=c\nstart=12288, size=81920, type=c\n' });
  const p1 = { offset: 2048 * 512, size: 8192 * 512 };
  const p2 = { offset: 12288 * 512, size: 81920 * 512 };
  for (const [p, label, extra] of [[p1, 'other', []], [p2, 'resin-boot', ['-F', '32', '-s', '1']]] as const) {
    const f = path.join(work, `${label}.fat`);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, p.size);
    runOk('mkfs.vfat', [...extra, '-n', label, f]);
    runOk('dd', [`if=${f}`, `of=${img}`, 'bs=1M', `seek=${p.offset}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
  }
  const found = await findBootPartition(img);
  assert.equal(found.index, 2);
  assert.equal(found.offset, p2.offset);
  const loc = await bootLocation(img);
  assert.deepEqual(await readBootInfo(loc), { slug: undefined, arch: undefined, deviceType: undefined, config: undefined });
  const k = staticIpKeyfile({ specs: '172.16.4.20/20,172.16.0.1', interfaceName: 'end0' });
  await writeSystemConnection(loc, k);
  assert.equal(mtoolsRead(img, p2.offset, 'system-connections/static-end0').stdout, k.content);
  assert.notEqual(mtoolsRead(img, p1.offset, 'system-connections/static-end0').code, 0, 'written into the wrong partition');
  fsckFat(img, p2.offset, p2.size, work);
  fsckFat(img, p1.offset, p1.size, work);
  // A file in the way of the directory is reported.
  await writeBootFile(loc, 'notadir', 'x');
  await assert.rejects(writeBootFile(loc, 'notadir/file', 'y'), /notadir exists and is not a directory/);

  // No resin-boot at all: a clear error naming the label.
  const plain = path.join(work, 'plain.img');
  fs.writeFileSync(plain, '');
  fs.truncateSync(plain, 8 * 1024 * 1024);
  runOk('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', plain], { input: 'label: dos\nstart=2048, type=83\n' });
  await assert.rejects(writeSystemConnection(await bootLocation(plain), k), /plain\.img: no partition labelled resin-boot; is it a balenaOS disk image\?/);
  // A flasher image: named as such, and its flash-boot is reachable by label.
  const flasher = buildBalenaImage(work, 'flasher.img', { flasher: true });
  await assert.rejects(findBootPartition(flasher.path), /flasher\.img: no partition labelled resin-boot, but a flash-boot one: this is a flasher image/);
  const flashBoot = flasher.partitions.find((p) => p.label === 'flash-boot')!;
  const floc = await bootLocation(flasher.path, FLASHER_BOOT_LABELS);
  await writeSystemConnection(floc, k);
  assert.equal(mtoolsRead(flasher.path, flashBoot.offset, 'system-connections/static-end0').stdout, k.content);
  assert.equal((await readBootInfo(floc)).slug, 'raspberrypi4-64');
  const noTable = path.join(work, 'zero.img');
  fs.writeFileSync(noTable, Buffer.alloc(1024 * 1024));
  await assert.rejects(findBootPartition(noTable), /zero\.img: no (readable MBR or GPT partition table|partition labelled resin-boot)/);
});
