/** inject (and the target half of preload): images from a source into a target. */
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { injectImages } from '../inject/inject.js';
import type { InjectPlan } from '../inject/plan.js';
import type { UndoSteps } from '../inject/apply.js';
import { selectImages } from '../selection/select.js';
import { checkLayerDepths } from '../engine/limits.js';
import type { ImageSource, SourceImage } from '../sources/source.js';
import { openSource } from '../sources/open.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import { lockFile, type TargetLock } from '../targets/target-lock.js';
import { SYSTEM_CONNECTIONS, bootLocation, checkSystemConnection, writeSystemConnection } from '../balena/boot-partition.js';
import { checkKeyfile, staticIpKeyfile } from '../balena/network.js';
import { archMatches, platformOf } from '../balena/arch.js';
import { readSplashImage, planSplash, writeSplash, type SplashPlan } from '../balena/splash.js';
import { refuseSecureBoot } from '../balena/secure-boot.js';
import { bootDeviceArch } from '../balena/boot-device.js';
import { isRegistrySource } from '../sources/open-registry.js';
import type { AppsJson } from '../balena/apps-json.js';
import { checkAppsTarget, checkSupervisorLoadsApps, readApps, referencesForApps, targetSupervisor, writeApps } from '../preload/apps.js';
import type { SupervisorVersion } from '../balena/supervisor.js';
import { WritePhase, abortableSource, abortableWriter, checkAborted, quietly } from '../run/abort.js';
import { UsageError } from '../errors.js';
import { openTarget, type TargetOptions } from './target.js';
import { ProgressEvents } from './progress.js';
import { libraryCall, type RunOptions, type SourceOptions } from './options.js';

export interface InjectOptions extends RunOptions, TargetOptions {
  /** Inject only these images of the source (references, IDs, ID prefixes). */
  image?: string[];
  /** Write this target state (a v3 apps.json, the API device state or the dashboard copy) as apps.json. */
  apps?: string;
  /** Set pinDevice in apps.json. */
  pinDevice?: boolean;
  /** Static addresses (`address/prefix[,gateway]`, one per IP family): a NetworkManager keyfile in resin-boot. */
  staticIp?: string[];
  /** With staticIp: the interface (default eth0). */
  interface?: string;
  /** With staticIp: DNS servers. */
  dns?: string[];
  /** A NetworkManager keyfile to put into resin-boot/system-connections/. */
  networkFile?: string;
  /** A mounted resin-boot partition for the network settings (with disk, the image's own is written). */
  resinBoot?: string;
  /** After writing, rebuild every injected layer and check it against its DiffID; undo the run on a mismatch. */
  verify?: boolean;
  /** A PNG for resin-boot/splash/ (balena/splash.ts): the boot logo. */
  splashImage?: string;
}

/** inject from a registry (docker://HOST --image …, or `registry` with apps): how to pull. */
export interface InjectSourceOptions extends InjectOptions, SourceOptions {}

export interface InjectImage {
  id: string;
  references: string[];
  /** The target already held it. */
  present: boolean;
}

export interface InjectLayer {
  chainId: string;
  action: 'copy' | 'reuse';
  cacheId: string;
  link: string;
  /** Files and content bytes to copy (null when the source does not say before streaming). */
  fileCount: number | null;
  bytes: number | null;
}

export interface InjectResult {
  dryRun: boolean;
  /** The target as described in messages. */
  target: string;
  images: InjectImage[];
  layers: InjectLayer[];
  /** References added to repositories.json, and tags moved from another image (as docker tag does). */
  referenceChanges: { added: string[]; moved: { key: string; from: string; to: string }[] };
  imageCount: number;
  layerCount: number;
  copiedLayerCount: number;
  reusedLayerCount: number;
  /** Files to copy, and the space and inodes they need (estimated before writing). */
  fileCount: number;
  bytes: number;
  inodeCount: number;
  /** For a dry run into a disk image: its free space and the growth the plan needs. */
  room: string | null;
  /** Whether the run wrote anything (false for a dry run, or when the target held everything). */
  changed: boolean;
  /** Whether apps.json was written. */
  appsJsonWritten: boolean;
  /** The network keyfile written, if any. */
  network: string | null;
  /** Where the splash logo was written (resin-boot, and flash-boot of a flasher image). */
  splash: string[];
  /** With a disk image: the bytes it grew by (0 when it did not need to); null for other targets. */
  imageGrowthBytes: number | null;
  /**
   * The balena supervisor the target will run (its image's tag, or the VERSION it sets), e.g.
   * `14.11.4`; null when the target holds no supervisor image that states a version.
   */
  supervisorVersion: string | null;
}

function result(plan: InjectPlan, target: string, extra: Pick<InjectResult, 'dryRun' | 'room' | 'changed' | 'appsJsonWritten' | 'network' | 'splash' | 'imageGrowthBytes' | 'supervisorVersion'>): InjectResult {
  const copied = plan.layers.filter((l) => l.action === 'copy').length;
  return {
    dryRun: extra.dryRun,
    target,
    images: plan.images.map(({ image, present }) => ({ id: image.id, references: image.references, present })),
    layers: plan.layers.map((l) => ({ chainId: l.chainId, action: l.action, cacheId: l.cacheId, link: l.link, fileCount: l.source.entries ?? null, bytes: l.source.bytes ?? null })),
    referenceChanges: { added: plan.references.added, moved: plan.references.moved.map((m) => ({ key: m.key, from: m.from, to: m.to })) },
    imageCount: plan.images.length,
    layerCount: plan.layers.length,
    copiedLayerCount: copied,
    reusedLayerCount: plan.layers.length - copied,
    fileCount: plan.filesToCopy,
    bytes: plan.bytes,
    inodeCount: plan.inodes,
    room: extra.room,
    changed: extra.changed,
    appsJsonWritten: extra.appsJsonWritten,
    network: extra.network,
    splash: extra.splash,
    imageGrowthBytes: extra.imageGrowthBytes,
    supervisorVersion: extra.supervisorVersion,
  };
}

/** Refuses images a device of this type cannot run, unless dontCheckArch (or its older alias force). */
function checkArchitecture(images: readonly SourceImage[], device: { arch: string; slug: string }, force: boolean, warn: (m: string) => void): void {
  for (const image of images) {
    const platform = platformOf(image.config);
    const ok = archMatches(device.arch, platform);
    const what = `${image.references[0] ?? image.id.slice(7, 19)} is ${platform.architecture}${platform.variant ? `/${platform.variant}` : ''}, the image is for ${device.slug} (${device.arch})`;
    if (ok === false) {
      if (!force) throw new Error(`${what}: the device could not run it; pass --dont-check-arch to inject it anyway`);
      warn(what);
    } else if (ok === undefined) warn(`unknown device architecture ${device.arch}; not checking ${image.references[0] ?? image.id}`);
  }
}

/** The NetworkManager keyfile the options ask for, checked before anything is written. */
async function keyfileFrom(opts: InjectOptions): Promise<{ fileName: string; content: string } | undefined> {
  const staticIp = opts.staticIp ?? [];
  if (staticIp.length > 0 && opts.networkFile) throw new UsageError('give --static-ip or --network-file, not both');
  if (staticIp.length === 0 && !opts.networkFile) {
    if (opts.interface || (opts.dns ?? []).length > 0) throw new UsageError('--interface and --dns go with --static-ip');
    return undefined;
  }
  if (!opts.resinBoot && !opts.disk) throw new UsageError('network settings go into resin-boot: give --resin-boot <dir> or --disk <image>');
  if (opts.networkFile) {
    let text: string;
    try {
      text = await fs.readFile(opts.networkFile, 'utf8');
    } catch {
      throw new Error(`--network-file ${opts.networkFile}: cannot read it`);
    }
    return checkKeyfile(text, opts.networkFile);
  }
  return staticIpKeyfile({ specs: staticIp, interfaceName: opts.interface, dns: opts.dns });
}

/** Writes `images` of an open source into the target the options name (inject and preload). */
export async function injectFrom(source: ImageSource, images: SourceImage[], opts: InjectOptions, apps?: AppsJson): Promise<InjectResult> {
  const warn = opts.onWarning ?? ((): void => undefined);
  // Before the target is opened (a disk image may be copied to --output): nothing written for an image the engine cannot use.
  checkLayerDepths(images, source.description);
  if (opts.pinDevice !== undefined && !opts.apps) throw new UsageError(`--${opts.pinDevice ? '' : 'no-'}pin-device sets pinDevice in the apps.json it writes: it needs --apps <file>`);
  if (apps && opts.engineRoot) throw new UsageError('--apps writes apps.json at the root of resin-data: use --resin-data or --disk');
  if (opts.resinBoot && opts.disk) throw new UsageError('--resin-boot goes with --resin-data or --engine-root; with --disk, resin-boot inside the image is written');
  const keyfile = await keyfileFrom(opts);
  if (opts.splashImage && !opts.resinBoot && !opts.disk) throw new UsageError('--splash-image goes into resin-boot: give --resin-boot <dir> or --disk <image>');
  const splash = opts.splashImage ? await readSplashImage(opts.splashImage) : undefined;
  const resinBoot = opts.resinBoot ? await bootLocation(opts.resinBoot) : undefined;
  if (resinBoot) await refuseSecureBoot(resinBoot);
  // With --resin-data, the device type comes from the mounted resin-boot's device-type.json.
  const bootDevice = resinBoot
    ? await bootDeviceArch(resinBoot).catch((e: unknown) => {
        if (opts.dontCheckArch) return undefined;
        throw e;
      })
    : undefined;
  const target = await openTarget(opts, warn);
  let done = false;
  let bootLock: TargetLock | undefined;
  const phase = new WritePhase();
  try {
    if (resinBoot?.kind === 'directory' && (keyfile || splash) && !opts.dryRun) {
      bootLock = await lockFile(resinBoot.path, resinBoot.path, { wait: opts.wait !== false, onWait: warn });
    }
    const device = target.device ?? bootDevice;
    if (device) checkArchitecture(images, device, opts.dontCheckArch === true || opts.force === true, warn);
    const boot = resinBoot ?? target.boot;
    const splashPlans: SplashPlan[] = [];
    if (splash && target.flasherBoot) splashPlans.push(await planSplash(target.flasherBoot, splash, `${opts.disk}:flash-boot`));
    if (splash && boot) splashPlans.push(await planSplash(boot, splash, boot.kind === 'directory' ? boot.path : `${opts.disk}:${target.flasherBoot ? "inner image's " : ''}resin-boot`));
    // Everything that can refuse is checked before the first write (the images included).
    if (apps) await checkAppsTarget(target.writer);
    if (keyfile && boot) await checkSystemConnection(boot, keyfile);
    let network: string | undefined;
    let supervisor: SupervisorVersion | undefined;
    const splashWritten: string[] = [];
    const finish = async (writer: TreeWriter, undo: UndoSteps): Promise<void> => {
      if (apps) await writeApps(writer, apps, undo);
      for (const plan of splashPlans) {
        checkAborted();
        splashWritten.push(await writeSplash(plan, undo));
      }
      if (keyfile && boot) {
        checkAborted();
        const existedDir = boot.kind === 'directory' && (await fs.lstat(path.join(boot.path, SYSTEM_CONNECTIONS)).then(() => true, () => false));
        const written = await writeSystemConnection(boot, keyfile);
        // Inside a disk image the work copy holds it (discarded on failure); a directory is undone here.
        if (boot.kind === 'directory' && !written.unchanged) {
          undo.step(async () => {
            await fs.rm(path.join(boot.path, SYSTEM_CONNECTIONS, keyfile.fileName), { force: true });
            if (!existedDir) await fs.rmdir(path.join(boot.path, SYSTEM_CONNECTIONS)).catch(() => undefined);
          });
        }
        network = `${boot.kind === 'directory' ? boot.path : 'resin-boot'}/${SYSTEM_CONNECTIONS}/${keyfile.fileName}`;
      }
    };
    const run = await injectImages(abortableSource(source), images, abortableWriter(target.writer), target.prefix, {
      dryRun: opts.dryRun,
      verify: opts.verify,
      progress: opts.onProgress ? new ProgressEvents('inject', opts.onProgress) : undefined,
      warn,
      beforeWrite: target.beforeWrite,
      withTarget: async (store) => {
        supervisor = await targetSupervisor(store, images);
        if (!apps) return [];
        checkSupervisorLoadsApps(supervisor, target.writer.description);
        return referencesForApps(apps, images, store);
      },
      finish: apps || keyfile || splashPlans.length > 0 ? finish : undefined,
      startWriting: () => phase.enter(),
    });
    if (opts.dryRun) {
      await target.abort();
      done = true;
      const room = target.room?.(run.plan) ?? null;
      return result(run.plan, target.writer.description, { dryRun: true, room, changed: false, appsJsonWritten: false, network: null, splash: [], imageGrowthBytes: null, supervisorVersion: supervisor?.version ?? null });
    }
    checkAborted();
    await target.ensureAdditionalSpace?.();
    await target.commit();
    done = true;
    phase.leave(true);
    const imageGrowthBytes = target.grewBy ? target.grewBy() : null;
    return result(run.plan, target.writer.description, { dryRun: false, room: null, changed: run.changed, appsJsonWritten: apps !== undefined, network: network ?? null, splash: splashWritten, imageGrowthBytes, supervisorVersion: supervisor?.version ?? null });
  } finally {
    if (!done) await quietly(() => target.abort());
    phase.leave(false);
    bootLock?.release();
  }
}

async function injectIn(bundle: string, opts: InjectSourceOptions): Promise<InjectResult> {
  // docker://… (or `registry`) takes the registry options as preload does: image names the
  // images to pull, and a multi-platform image is resolved for the disk image's device type.
  const registry = isRegistrySource(bundle);
  let deviceArch: string | undefined;
  if (registry && opts.disk && !opts.platform) {
    const { readDeviceArch } = await import('../disk/disk-target.js');
    deviceArch = (await readDeviceArch(opts.disk)).arch;
  }
  const wanted = opts.image ?? [];
  const apps = opts.apps ? await readApps(opts.apps, { pinDevice: opts.pinDevice }) : undefined;
  const source = await openSource(bundle, {
    spoolStdin: opts.disk !== undefined,
    warn: opts.onWarning,
    identity: opts.identity,
    insecureHostKey: opts.insecureHostKey,
    registry: registry ? { ...opts, images: wanted, apps, deviceArch } : undefined,
  });
  try {
    const all = await source.images();
    if (all.length === 0) {
      // An engine root's image whose config is missing or does not match its ID is left out (as the engine does).
      throw new Error(`${bundle} holds no image to inject (none has a config that matches its image ID)`);
    }
    const images = registry || wanted.length === 0 ? all : selectImages(wanted, all, bundle);
    return await injectFrom(source, images, opts, apps);
  } finally {
    await source.close();
  }
}

/**
 * Writes the images of a bundle (or any source) into a target: `resinData`, `engineRoot` or
 * `disk` (what `transplant inject --json` prints).
 */
export async function inject(bundle: string, options: InjectSourceOptions): Promise<InjectResult> {
  return libraryCall(options, () => injectIn(bundle, options));
}
