/**
 * The preloaded target state, `apps.json` at the root of `resin-data`, in the v3 format
 * the supervisor (>= 13) loads offline (balena-supervisor src/types/state.ts
 * `AppsJsonFormat`, src/device-state/preload.ts `loadTargetFromFile`).
 *
 * Users hold the state in one of these forms, all turned into the same apps.json:
 * - a v3 apps.json: `{ config, apps, pinDevice? }`;
 * - the API's device state (`GET /device/v3/<uuid>/state`): `{ "<device uuid>": { name, config, apps } }`;
 * - the dashboard's copy (Diagnostics -> Supervisor state): the same wrapped in `local`,
 *   possibly beside `dependent` (balena-preload also writes `pinDevice` beside `local`).
 * v2 apps.json (apps keyed by numeric app id with `commit`/`services`, no `releases`) is
 * refused: the supervisor converts it only with the balena API (src/lib/legacy.ts
 * `fromV2TargetApps` asks the API for each app uuid). Legacy single-container apps.json
 * (a JSON array) is refused too: src/device-state/legacy.ts converts it into a
 * placeholder app (uuid "user-app", release id 1) that matches no real release.
 */
import Ajv, { type ErrorObject } from 'ajv';

export interface AppsJsonService {
  /** Deprecated in the supervisor's state v4 but required by v3. */
  id: number;
  image_id: number;
  image: string;
  environment: Record<string, string>;
  labels: Record<string, string>;
  running?: boolean;
  contract?: Record<string, unknown>;
  composition?: Record<string, unknown>;
  [extra: string]: unknown;
}

export interface AppsJsonRelease {
  id: number;
  services?: Record<string, AppsJsonService>;
  volumes?: Record<string, Record<string, unknown>>;
  networks?: Record<string, Record<string, unknown>>;
  [extra: string]: unknown;
}

export interface AppsJsonApp {
  id: number;
  name: string;
  class?: 'fleet' | 'app' | 'block';
  /** Keyed by release commit; the supervisor uses only the first. */
  releases: Record<string, AppsJsonRelease>;
  parent_app?: string;
  is_host?: boolean;
  [extra: string]: unknown;
}

export interface AppsJson {
  config: Record<string, string>;
  /** Keyed by app uuid. */
  apps: Record<string, AppsJsonApp>;
  pinDevice?: boolean;
}

export type TargetStateForm = 'apps.json' | 'device-state' | 'dashboard';

export interface NormalizeOptions {
  /** Sets `pinDevice` (the supervisor then pins the device to the first fleet app's first release). */
  pinDevice?: boolean;
  /**
   * Keep only apps of class `fleet` (the default class). A device's state from the API may
   * also hold the supervisor's and the host OS's apps; the supervisor tries to find the
   * image of every service of every app in apps.json, so their images must then be in the
   * engine under those exact names too.
   */
  onlyFleet?: boolean;
}

export interface NormalizedTargetState {
  appsJson: AppsJson;
  form: TargetStateForm;
  /**
   * What was left out: top-level keys apps.json must not hold (e.g. `name`, `dependent`),
   * and `apps.<uuid>` for apps removed by `onlyFleet`.
   */
  dropped: string[];
}

// Rules of balena-supervisor src/types/basic.ts.
const SHORT = 255;
/** DockerName: container/volume/network/service names (moby daemon/names.go). */
const DOCKER_NAME = '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$';
const ENV_VAR_NAME = '^[a-zA-Z_][a-zA-Z0-9_]*$';
const CONFIG_VAR_NAME = '^[a-zA-Z_][a-zA-Z0-9_:]*$';
/** Printable ASCII except space, quotes and backtick. */
const LABEL_NAME = '^[!#-&(-_a-~]+$';
/**
 * The digest part the supervisor accepts in an image name (src/lib/docker-utils.ts
 * getRegistryAndName); anything else throws there and abandons the preload.
 */
const IMAGE_NAME = '^[^@]+(@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$';

/**
 * NumericIdentifier: a non-negative integer, as a number or a decimal string. `minimum`
 * applies only to numbers and `pattern` only to strings, so one schema covers both.
 */
const numericId = {
  type: ['integer', 'string'],
  minimum: 0,
  pattern: '^[0-9]+$',
  errorText: 'must be a non-negative integer id',
};
const shortString = { type: 'string', maxLength: SHORT, errorText: 'must be a string of at most 255 characters' };
const stringMap = (keyPattern: string, keyText: string) => ({
  type: 'object',
  propertyNames: { maxLength: SHORT, pattern: keyPattern, errorText: keyText },
  additionalProperties: { type: 'string', errorText: 'must be a string' },
  errorText: 'must be an object of strings',
});
const objectMap = (keyPattern: string, keyText: string, valueText: string) => ({
  type: 'object',
  propertyNames: { maxLength: SHORT, pattern: keyPattern, errorText: keyText },
  additionalProperties: { type: 'object', errorText: valueText },
  errorText: 'must be an object',
});
const dockerNameText = 'is not a valid name: at most 255 characters, [a-zA-Z0-9][a-zA-Z0-9_.-]*';

const serviceSchema = {
  type: 'object',
  required: ['id', 'image_id', 'image', 'environment', 'labels'],
  properties: {
    id: numericId,
    image_id: numericId,
    image: {
      type: 'string',
      minLength: 1,
      maxLength: SHORT,
      pattern: IMAGE_NAME,
      errorText: 'must be an image reference of 1 to 255 characters (a digest, if any, as algorithm:hex)',
    },
    environment: stringMap(ENV_VAR_NAME, 'is not a valid variable name: at most 255 characters, [a-zA-Z_][a-zA-Z0-9_]*'),
    labels: stringMap(LABEL_NAME, 'is not a valid label name: printable ASCII except space, quotes and backtick'),
    running: { type: 'boolean', errorText: 'must be true or false' },
    contract: { type: 'object', errorText: 'must be an object' },
    composition: { type: 'object', errorText: 'must be an object' },
  },
  errorText: 'must be an object',
};

const releaseSchema = {
  type: 'object',
  required: ['id'],
  properties: {
    id: numericId,
    services: {
      type: 'object',
      propertyNames: { maxLength: SHORT, pattern: DOCKER_NAME, errorText: `service name ${dockerNameText}` },
      additionalProperties: serviceSchema,
      errorText: 'must be an object of services',
    },
    volumes: objectMap(DOCKER_NAME, `volume name ${dockerNameText}`, 'must be an object (a volume)'),
    networks: objectMap(DOCKER_NAME, `network name ${dockerNameText}`, 'must be an object (a network)'),
  },
  errorText: 'must be an object',
};

const appSchema = {
  type: 'object',
  required: ['id', 'name', 'releases'],
  properties: {
    id: numericId,
    name: shortString,
    class: { enum: ['fleet', 'app', 'block'], errorText: 'must be "fleet", "app" or "block"' },
    releases: {
      type: 'object',
      minProperties: 1,
      maxProperties: 1,
      propertyNames: { maxLength: SHORT, errorText: 'release commit must be at most 255 characters' },
      additionalProperties: releaseSchema,
      errorText:
        'must hold exactly one release (the supervisor refuses an apps.json app without one and would use only the first)',
    },
    parent_app: shortString,
    is_host: { type: 'boolean', errorText: 'must be true or false' },
  },
  errorText: 'must be an object',
};

const appsJsonSchema = {
  type: 'object',
  required: ['config', 'apps'],
  additionalProperties: false,
  properties: {
    config: stringMap(
      CONFIG_VAR_NAME,
      'is not a valid config variable name: at most 255 characters, [a-zA-Z_][a-zA-Z0-9_:]*',
    ),
    apps: {
      type: 'object',
      propertyNames: { maxLength: SHORT, errorText: 'app uuid must be at most 255 characters' },
      additionalProperties: appSchema,
      errorText: 'must be an object keyed by app uuid',
    },
    pinDevice: { type: 'boolean', errorText: 'must be true or false' },
  },
  errorText: 'must be an object',
};

const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true });
ajv.addKeyword({ keyword: 'errorText', schemaType: 'string' });
const validateAppsJson = ajv.compile(appsJsonSchema);

/** `$.apps["8f3…"].releases["c0ffee…"].services.main.image`, from a JSON pointer. */
export function jsonPath(pointer: string, extraKey?: string): string {
  const parts = pointer === '' ? [] : pointer.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extraKey !== undefined) parts.push(extraKey);
  let out = '$';
  for (const p of parts) out += /^[A-Za-z_][A-Za-z0-9_]*$/.test(p) ? `.${p}` : `[${JSON.stringify(p)}]`;
  return out;
}

function describeError(e: ErrorObject): string | undefined {
  // The wrapper error ajv adds after a failing property name repeats the inner one.
  if (e.keyword === 'propertyNames') return undefined;
  const text = (e.parentSchema as { errorText?: string } | undefined)?.errorText;
  if (e.propertyName !== undefined) {
    return `${jsonPath(e.instancePath, e.propertyName)}: ${text ?? e.message ?? 'invalid name'}`;
  }
  if (e.keyword === 'required') {
    return `${jsonPath(e.instancePath, String(e.params.missingProperty))}: is required`;
  }
  if (e.keyword === 'additionalProperties') {
    return `${jsonPath(e.instancePath, String(e.params.additionalProperty))}: is not part of apps.json`;
  }
  return `${jsonPath(e.instancePath)}: ${text ?? e.message ?? 'is invalid'}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The supervisor's NumericIdentifier.is, used on app keys to detect a v2 apps.json. */
function isNumericKey(k: string): boolean {
  return /^[0-9]+$/.test(k);
}

const FETCH_V3 =
  'get the device\'s v3 state instead (GET /device/v3/<device uuid>/state from the balena API, or the dashboard\'s Diagnostics -> Supervisor state)';

function refuseOldFormats(apps: unknown, where: string): void {
  if (Array.isArray(apps)) {
    throw new Error(
      `${where}: "apps" is a list (a legacy or v2 apps.json); the supervisor loads such files only by converting them with the balena API, so it cannot load them offline; ${FETCH_V3}`,
    );
  }
  if (!isRecord(apps)) return;
  const numeric = Object.keys(apps).filter(isNumericKey);
  const flat = Object.keys(apps).filter((k) => {
    const app = apps[k];
    return isRecord(app) && !('releases' in app) && ('commit' in app || 'services' in app);
  });
  if (numeric.length > 0 || flat.length > 0) {
    const which = numeric.length > 0 ? `apps keyed by numeric app id (${numeric.slice(0, 3).join(', ')})` : `apps with commit/services and no releases (${flat.slice(0, 3).join(', ')})`;
    throw new Error(
      `${where}: this is a v2 target state (${which}); the supervisor converts v2 apps.json only by asking the balena API for each app's uuid, so a device cannot load it offline; ${FETCH_V3}`,
    );
  }
}

const DEVICE_KEYS = new Set(['name', 'config', 'apps']);

/**
 * Turns an apps.json, an API device state or a dashboard state into a validated v3 apps.json.
 * `source` names the input in messages (a file name). Throws one Error listing every problem.
 */
export function normalizeTargetStateDetailed(
  input: unknown,
  source: string,
  options: NormalizeOptions = {},
): NormalizedTargetState {
  if (Array.isArray(input)) {
    throw new Error(
      `${source}: is a legacy single-container apps.json (a JSON list); the supervisor turns it into a placeholder app (uuid "user-app", release id 1) that matches no real release, so transplant does not write it; ${FETCH_V3}`,
    );
  }
  if (!isRecord(input)) {
    throw new Error(`${source}: is not a JSON object; expected an apps.json or a device's target state`);
  }
  const dropped: string[] = [];
  let form: TargetStateForm;
  let device: Record<string, unknown>;
  let pinDevice: unknown;

  if ('local' in input) {
    form = 'dashboard';
    for (const k of Object.keys(input)) if (k !== 'local' && k !== 'pinDevice') dropped.push(k);
    pinDevice = input.pinDevice;
    let local = input.local;
    if (!isRecord(local)) throw new Error(`${source}: "local" is not an object; expected the device's target state inside it`);
    // `local` may itself hold the state keyed by device uuid.
    if (!('apps' in local) && !('config' in local)) local = unwrapDevice(local, source, dropped);
    device = local as Record<string, unknown>;
  } else if ('apps' in input || 'config' in input) {
    form = 'apps.json';
    device = input;
    pinDevice = input.pinDevice;
  } else {
    form = 'device-state';
    device = unwrapDevice(input, source, dropped);
    pinDevice = undefined;
  }

  refuseOldFormats(device.apps, source);
  for (const k of Object.keys(device)) {
    if (!DEVICE_KEYS.has(k) && !(form === 'apps.json' && k === 'pinDevice')) dropped.push(k);
  }
  if ('name' in device) dropped.push('name');

  let apps = device.apps ?? {};
  if (options.onlyFleet && isRecord(apps)) {
    const kept: Record<string, unknown> = {};
    for (const [uuid, app] of Object.entries(apps)) {
      const cls = isRecord(app) ? (app.class ?? 'fleet') : 'fleet';
      if (cls === 'fleet') kept[uuid] = app;
      else dropped.push(`apps.${uuid}`);
    }
    apps = kept;
  }
  const candidate: Record<string, unknown> = {
    config: device.config ?? {},
    apps,
  };
  if (options.pinDevice !== undefined) candidate.pinDevice = options.pinDevice;
  else if (pinDevice !== undefined) candidate.pinDevice = pinDevice;

  const problems: string[] = [];
  if (!validateAppsJson(candidate)) {
    for (const e of validateAppsJson.errors ?? []) {
      const line = describeError(e);
      if (line !== undefined && !problems.includes(line)) problems.push(line);
    }
  }
  if (problems.length === 0) {
    const apps = candidate.apps as Record<string, AppsJsonApp>;
    const config = candidate.config as Record<string, string>;
    if (Object.keys(apps).length === 0 && Object.keys(config).length === 0) {
      problems.push('$: holds no apps and no config (the supervisor ignores such a file)');
    }
    if (candidate.pinDevice === true && !Object.values(apps).some((a) => (a.class ?? 'fleet') === 'fleet')) {
      problems.push('$.pinDevice: is true but no app has class "fleet" (the supervisor pins to the first fleet app)');
    }
  }
  if (problems.length > 0) {
    const n = problems.length;
    throw new Error(
      `${source}: not a valid apps.json target state (${n} problem${n === 1 ? '' : 's'}, checked with the supervisor's rules):\n` +
        problems.map((p) => `  ${p}`).join('\n'),
    );
  }
  return { appsJson: toAppsJson(candidate), form, dropped: [...new Set(dropped)] };
}

/** Same as normalizeTargetStateDetailed, returning only the apps.json. */
export function normalizeTargetState(input: unknown, source: string, options: NormalizeOptions = {}): AppsJson {
  return normalizeTargetStateDetailed(input, source, options).appsJson;
}

function unwrapDevice(input: Record<string, unknown>, source: string, dropped: string[]): Record<string, unknown> {
  const keys = Object.keys(input);
  const devices = keys.filter((k) => isRecord(input[k]) && ('apps' in (input[k] as object) || 'config' in (input[k] as object)));
  if (devices.length === 0) {
    throw new Error(
      `${source}: is neither an apps.json (no "apps") nor a device state (an object keyed by device uuid holding "apps"); ${FETCH_V3}`,
    );
  }
  if (devices.length > 1) {
    throw new Error(
      `${source}: holds the state of ${devices.length} devices (${devices.slice(0, 3).join(', ')}); give the state of one device`,
    );
  }
  for (const k of keys) if (k !== devices[0]) dropped.push(k);
  return input[devices[0]] as Record<string, unknown>;
}

/** Ids given as decimal strings become numbers, as the supervisor decodes them. */
function toAppsJson(candidate: Record<string, unknown>): AppsJson {
  const copy = JSON.parse(JSON.stringify(candidate)) as AppsJson;
  const num = (v: unknown): number => Number(v);
  for (const app of Object.values(copy.apps)) {
    app.id = num(app.id);
    for (const release of Object.values(app.releases)) {
      release.id = num(release.id);
      for (const service of Object.values(release.services ?? {})) {
        service.id = num(service.id);
        service.image_id = num(service.image_id);
      }
    }
  }
  const out: AppsJson = { config: copy.config, apps: copy.apps };
  // The supervisor pins only on a true pinDevice (device-state/preload.ts); false and absent
  // mean the same, so every form of the same state gives the same file.
  if (copy.pinDevice === true) out.pinDevice = true;
  return out;
}

export interface ServiceImage {
  /** App uuid. */
  app: string;
  appName: string;
  /** `fleet` (the user's app), `app` (e.g. the supervisor) or `block`. */
  appClass: 'fleet' | 'app' | 'block';
  /** The host OS app (its services are OS extensions, not engine images). */
  isHost: boolean;
  /** Release commit. */
  release: string;
  service: string;
  /** The image name exactly as in apps.json. */
  image: string;
}

/** Every service image of the first release of every app: each must resolve in the engine at first boot. */
export function serviceImages(apps: AppsJson): ServiceImage[] {
  const out: ServiceImage[] = [];
  for (const [appUuid, app] of Object.entries(apps.apps)) {
    const [commit] = Object.keys(app.releases);
    if (commit === undefined) continue;
    for (const [service, svc] of Object.entries(app.releases[commit].services ?? {})) {
      out.push({
        app: appUuid,
        appName: app.name,
        appClass: app.class ?? 'fleet',
        isHost: app.is_host === true,
        release: commit,
        service,
        image: svc.image,
      });
    }
  }
  return out;
}

/**
 * apps.json as written to `resin-data`: top-level keys in a fixed order (config, apps,
 * pinDevice), everything else in its given order (the first release must stay first).
 * The supervisor JSON.parse()s it, so pretty and compact are both accepted.
 */
export function serializeAppsJson(apps: AppsJson, options: { pretty?: boolean } = {}): string {
  const ordered: AppsJson = { config: apps.config, apps: apps.apps };
  if (apps.pinDevice !== undefined) ordered.pinDevice = apps.pinDevice;
  return options.pretty === false ? JSON.stringify(ordered) : JSON.stringify(ordered, null, 2) + '\n';
}
