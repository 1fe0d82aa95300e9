/** transplant inject: images from a bundle (or any source) into a target engine data root. */
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { formatBytes, injectImages } from '../../inject/inject.js';
import type { InjectPlan } from '../../inject/plan.js';
import { selectImages } from '../../selection/select.js';
import { checkLayerDepths } from '../../engine/limits.js';
import type { ImageSource, SourceImage } from '../../sources/source.js';
import { findLiveEngine } from '../../targets/live-engine.js';
import { HostTreeWriter } from '../../targets/host-fs.js';
import type { TreeWriter } from '../../targets/tree-writer.js';
import { openSource } from '../open-source.js';
import { WritePhase, checkInterrupted, interruptible, interruptibleWriter, quietly } from '../interrupt.js';
import { TargetLock, lockFile, lockFiles } from '../../targets/target-lock.js';
import type { UndoSteps } from '../../inject/apply.js';
import { existsSync } from 'node:fs';
import { ReadOnlyTreeWriter } from '../../targets/read-only.js';
import { FLASHER_BOOT_LABELS, SYSTEM_CONNECTIONS, bootLocation, checkSystemConnection, writeSystemConnection, type BootLocation } from '../../balena/boot-partition.js';
import { checkKeyfile, staticIpKeyfile } from '../../balena/network.js';
import { archMatches, platformOf } from '../../balena/arch.js';
import { readSplashImage, planSplash, writeSplash, type SplashPlan } from '../../balena/splash.js';
import { refuseSecureBoot, refuseSecureBootImage } from '../../balena/secure-boot.js';
import { bootDeviceArch } from '../../balena/boot-device.js';
import { parseByteSize } from '../../disk/size.js';
import { checkAppsTarget, readApps, referencesForApps, writeApps } from '../../preload/apps.js';
import type { AppsJson } from '../../balena/apps-json.js';
import { LayerProgressLine } from '../progress.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { isRegistrySource, type RegistryCliOptions } from '../registry-options.js';

export interface TargetOptions {
  dryRun?: boolean;
  resinData?: string;
  engineRoot?: string;
  disk?: string;
  output?: string;
  force?: boolean;
  /** false (--no-wait): fail at once when another run holds the target, instead of waiting. */
  wait?: boolean;
  /** --additional-space: bytes resin-data keeps free beyond what the images need (disk/size.ts syntax). */
  additionalSpace?: string;
  /** --dont-check-arch: inject images the device's architecture cannot run (warned). */
  dontCheckArch?: boolean;
  /** Internal: --disk is a private work copy of the user's image (disk/compressed-image.ts), written in place. */
  adoptDisk?: { shownAs: string };
}

export interface InjectCommandOptions extends TargetOptions {
  image: string[];
  apps?: string;
  pinDevice?: boolean;
  staticIp?: string[];
  interface?: string;
  dns?: string[];
  networkFile?: string;
  resinBoot?: string;
  /** --splash-image: a PNG for resin-boot/splash/ (balena/splash.ts). */
  splashImage?: string;
  verify?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

/** A target opened for writing: commit() makes the result final, abort() leaves the target as it was. */
export interface OpenTarget {
  writer: TreeWriter;
  /** The engine data root inside the writer's root. */
  prefix: string;
  beforeWrite?: (plan: InjectPlan) => Promise<void>;
  /** The device type of a disk image (resin-boot's device-type.json). */
  device?: { arch: string; slug: string };
  /** Where resin-boot is written (the disk image's work copy), for network keyfiles. */
  boot?: BootLocation;
  /** For a dry run: what the plan means for the target's free space. */
  room?: (plan: InjectPlan) => string;
  /** flash-boot of a flasher image's work copy (the installer's boot partition). */
  flasherBoot?: BootLocation;
  /** Bytes the disk image grew by (after beforeWrite). */
  grewBy?: () => number;
  /** Before commit: the room --additional-space asks for, also when there was nothing to copy. */
  ensureAdditionalSpace?: () => Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

async function assertDirectory(dir: string, option: string): Promise<void> {
  let st;
  try {
    st = await fs.stat(dir);
  } catch {
    throw new Error(`${option} ${dir}: no such directory`);
  }
  if (!st.isDirectory()) throw new Error(`${option} ${dir} is not a directory`);
}

/** Ties a target's lock to its end: released once it is committed or aborted. */
function releasingOnEnd(target: OpenTarget, lock: TargetLock): OpenTarget {
  return {
    ...target,
    commit: async () => {
      try {
        await target.commit();
      } finally {
        lock.release();
      }
    },
    abort: async () => {
      try {
        await target.abort();
      } finally {
        lock.release();
      }
    },
  };
}

/**
 * Opens the target for writing, holding an exclusive lock on it for the whole run
 * (targets/target-lock.ts): the disk image file, or the resin-data / engine root directory.
 * A dry run takes no lock.
 */
export async function openTarget(opts: TargetOptions, notify: (message: string) => void = () => undefined): Promise<OpenTarget> {
  const lockOptions = { wait: opts.wait !== false, onWait: notify };
  const given = [opts.resinData, opts.engineRoot, opts.disk].filter((x) => x !== undefined);
  if (given.length !== 1) throw new UsageError('give exactly one target: --resin-data <dir>, --engine-root <dir> or --disk <image>');
  if (opts.output && !opts.disk) throw new UsageError('--output goes with --disk');
  const additional = opts.additionalSpace !== undefined ? parseByteSize(opts.additionalSpace, '--additional-space') : 0;
  if (opts.additionalSpace !== undefined && !opts.disk) throw new UsageError('--additional-space goes with --disk (resin-data of a disk image is grown for it)');
  if (opts.disk && !opts.adoptDisk) {
    // A compressed image, or a compressed --output: written on a private work copy (disk/compressed-image.ts).
    const { needsTranscoding, openTranscoded } = await import('../../disk/compressed-image.js');
    const shownAs = opts.disk;
    if (needsTranscoding(opts.disk, opts.dryRun ? undefined : opts.output)) {
      return openTranscoded({ disk: opts.disk, output: opts.output, dryRun: opts.dryRun }, (work) => openTarget({ ...opts, disk: work, output: undefined, adoptDisk: { shownAs } }, notify));
    }
  }
  if (opts.disk) {
    const { openDiskTarget, readDeviceArch, estimateRoom, flasherRootA, realImagePath } = await import('../../disk/disk-target.js');
    const device = await readDeviceArch(opts.disk);
    await refuseSecureBootImage(opts.disk);
    if (opts.dryRun && !flasherRootA(opts.disk)) {
      // Planning reads resin-data in place, through a disk that keeps writes in memory.
      const { DiskImageReader } = await import('../../disk/read-only.js');
      const writer = new ReadOnlyTreeWriter(await DiskImageReader.open(opts.disk));
      const disk = opts.disk;
      return {
        writer,
        prefix: 'docker',
        device,
        room: (plan) => {
          const r = estimateRoom(disk, plan.bytes + additional, plan.inodes);
          return `resin-data has ${formatBytes(r.freeBytes)} and ${r.freeInodes} inodes free; ${r.growBy > 0 ? `the image would grow by ${formatBytes(r.growBy)}` : 'no growth needed'}`;
        },
        commit: () => writer.close(),
        abort: () => writer.close(),
      };
    }
    // The real file a symlink names: an in-place run replaces it (disk-target.ts).
    const lock = existsSync(opts.disk) ? await lockFile(realImagePath(opts.disk), opts.disk, lockOptions) : new TargetLock([]);
    let disk;
    let boot: BootLocation;
    try {
      disk = await openDiskTarget(opts.disk, { output: opts.output, adopt: opts.adoptDisk !== undefined, shownAs: opts.adoptDisk?.shownAs });
    } catch (err) {
      lock.release();
      throw err;
    }
    try {
      // For a flasher image, resin-boot of the inner image (the one the device will boot).
      boot = await bootLocation(disk.bootImagePath);
    } catch (err) {
      await disk.abort();
      lock.release();
      throw err;
    }
    let grewBy = 0;
    let sized = false;
    return releasingOnEnd({
      writer: disk.writer,
      prefix: 'docker',
      device,
      boot,
      flasherBoot: disk.bootImagePath !== disk.workPath ? { kind: 'image', path: disk.workPath, labels: [...FLASHER_BOOT_LABELS] } : undefined,
      grewBy: () => grewBy,
      beforeWrite: async (plan) => {
        grewBy = (await disk.ensureRoom(plan.bytes + additional, plan.inodes)).grewBy;
        sized = true;
      },
      ensureAdditionalSpace: async () => {
        if (sized || additional === 0) return;
        grewBy = (await disk.ensureRoom(additional, 0)).grewBy;
        sized = true;
      },
      commit: () => disk.commit(),
      abort: () => disk.abort(),
    }, lock);
  }
  const dir = (opts.resinData ?? opts.engineRoot) as string;
  const option = opts.resinData ? '--resin-data' : '--engine-root';
  await assertDirectory(dir, option);
  const prefix = opts.resinData ? 'docker' : '';
  const engineRoot = path.join(dir, prefix);
  // resin-data, then its engine root when it has one (every run locks in this order, and a
  // run given that engine root as --engine-root meets the same lock).
  const locked = [{ file: dir, what: dir }];
  if (prefix && existsSync(engineRoot)) locked.push({ file: engineRoot, what: engineRoot });
  const lock = opts.dryRun ? new TargetLock([]) : await lockFiles(locked, lockOptions);
  try {
    const pid = await findLiveEngine(engineRoot);
    if (pid !== undefined && !opts.force) {
      throw new Error(`an engine (pid ${pid}) is running on ${engineRoot}; stop it first (writing under a live engine corrupts it), or pass --force`);
    }
  } catch (err) {
    lock.release();
    throw err;
  }
  const writer = new HostTreeWriter(dir);
  return releasingOnEnd({ writer, prefix, commit: () => writer.close(), abort: () => writer.close() }, lock);
}

/** Refuses images a device of this type cannot run, unless --dont-check-arch (or its older alias --force). */
function checkArchitecture(images: readonly SourceImage[], device: { arch: string; slug: string }, force: boolean, out: Output): void {
  for (const image of images) {
    const platform = platformOf(image.config);
    const ok = archMatches(device.arch, platform);
    const what = `${image.references[0] ?? image.id.slice(7, 19)} is ${platform.architecture}${platform.variant ? `/${platform.variant}` : ''}, the image is for ${device.slug} (${device.arch})`;
    if (ok === false) {
      if (!force) throw new Error(`${what}: the device could not run it; pass --dont-check-arch to inject it anyway`);
      out.warn(what);
    } else if (ok === undefined) out.warn(`unknown device architecture ${device.arch}; not checking ${image.references[0] ?? image.id}`);
  }
}

export function describePlan(plan: InjectPlan): string {
  const lines: string[] = [];
  for (const { image, present } of plan.images) {
    lines.push(`image ${image.id.slice(7, 19)} ${image.references.join(', ') || '<none>'}${present ? ' (already present)' : ''}`);
  }
  for (const l of plan.layers) {
    const files = l.source.entries ?? 0;
    lines.push(
      l.action === 'reuse'
        ? `layer ${l.chainId.slice(7, 19)}: reuse (target already has it)`
        : `layer ${l.chainId.slice(7, 19)}: copy ${files} files, ${formatBytes(l.source.bytes ?? l.source.size)} into overlay2/${l.cacheId.slice(0, 12)}…`,
    );
  }
  for (const key of plan.references.added) lines.push(`reference ${key}: add`);
  for (const m of plan.references.moved) lines.push(`reference ${m.key}: move from ${m.from.slice(7, 19)}`);
  const copies = plan.layers.filter((l) => l.action === 'copy').length;
  lines.push(`total: ${copies} layers to copy, ${plan.layers.length - copies} to reuse, ${plan.filesToCopy} files, about ${formatBytes(plan.bytes)} and ${plan.inodes} inodes`);
  return lines.join('\n');
}

export function planJson(plan: InjectPlan): unknown {
  return {
    images: plan.images.map(({ image, present }) => ({ id: image.id, references: image.references, present })),
    layers: plan.layers.map((l) => ({ chainId: l.chainId, action: l.action, cacheId: l.cacheId, link: l.link, entries: l.source.entries, bytes: l.source.bytes })),
    references: { added: plan.references.added, moved: plan.references.moved },
    bytes: plan.bytes,
    inodes: plan.inodes,
  };
}

/** The NetworkManager keyfile the options ask for, checked before anything is written. */
async function keyfileFrom(opts: InjectCommandOptions): Promise<{ fileName: string; content: string } | undefined> {
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

export async function injectFrom(source: ImageSource, images: SourceImage[], opts: InjectCommandOptions, out: Output, apps?: AppsJson): Promise<void> {
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
  const bootDevice = resinBoot ? await bootDeviceArch(resinBoot).catch((e: unknown) => { if (opts.dontCheckArch) return undefined; throw e; }) : undefined;
  const notify = (m: string): void => out.warn(m);
  const target = await openTarget(opts, notify);
  let done = false;
  let bootLock: TargetLock | undefined;
  const phase = new WritePhase();
  try {
    if (resinBoot?.kind === 'directory' && (keyfile || splash) && !opts.dryRun) {
      bootLock = await lockFile(resinBoot.path, resinBoot.path, { wait: opts.wait !== false, onWait: notify });
    }
    const device = target.device ?? bootDevice;
    if (device) checkArchitecture(images, device, opts.dontCheckArch === true || opts.force === true, out);
    const boot = resinBoot ?? target.boot;
    const splashPlans: SplashPlan[] = [];
    if (splash && target.flasherBoot) splashPlans.push(await planSplash(target.flasherBoot, splash, `${opts.disk}:flash-boot`));
    if (splash && boot) splashPlans.push(await planSplash(boot, splash, boot.kind === 'directory' ? boot.path : `${opts.disk}:${target.flasherBoot ? 'inner image\'s ' : ''}resin-boot`));
    // Everything that can refuse is checked before the first write (the images included).
    if (apps) await checkAppsTarget(target.writer);
    if (keyfile && boot) await checkSystemConnection(boot, keyfile);
    const finish = async (writer: TreeWriter, undo: UndoSteps): Promise<void> => {
      if (apps) await writeApps(writer, apps, undo);
      for (const plan of splashPlans) {
        checkInterrupted();
        splashWritten.push(await writeSplash(plan, undo));
      }
      if (keyfile && boot) {
        checkInterrupted();
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
    let network: string | undefined;
    const splashWritten: string[] = [];
    const result = await injectImages(interruptible(source), images, interruptibleWriter(target.writer), target.prefix, {
      dryRun: opts.dryRun,
      verify: opts.verify,
      progress: new LayerProgressLine('inject'),
      warn: (m) => out.warn(m),
      beforeWrite: target.beforeWrite,
      extraReferences: apps ? (store) => referencesForApps(apps, images, store) : undefined,
      finish: apps || keyfile || splashPlans.length > 0 ? finish : undefined,
      startWriting: () => phase.enter(),
    });
    if (opts.dryRun) {
      await target.abort();
      done = true;
      const room = target.room?.(result.plan);
      out.data({ ...(planJson(result.plan) as object), room }, () => describePlan(result.plan) + (room ? `\n${room}` : ''));
      return;
    }
    checkInterrupted();
    await target.ensureAdditionalSpace?.();
    await target.commit();
    done = true;
    phase.leave(true);
    const copied = result.plan.layers.filter((l) => l.action === 'copy').length;
    const grewBy = target.grewBy?.() ?? 0;
    const extras = [
      apps ? 'apps.json written' : '',
      network ? `network settings in ${network}` : '',
      splashWritten.length > 0 ? `splash logo in ${splashWritten.join(' and ')}` : '',
      target.grewBy ? (grewBy > 0 ? `the image grew by ${formatBytes(grewBy)}` : 'the image did not need to grow') : '',
    ].filter(Boolean);
    const growth = target.grewBy ? { imageGrowthBytes: grewBy } : {};
    out.data({ ...(planJson(result.plan) as object), changed: result.changed, appsJson: apps !== undefined, network, splash: splashWritten, ...growth }, () =>
      (result.changed
        ? `injected ${images.length} images into ${target.writer.description}: ${copied} layers copied, ${result.plan.layers.length - copied} reused, ${result.plan.references.added.length} references added`
        : `${target.writer.description} already holds every image and reference`) + (extras.length > 0 ? `; ${extras.join('; ')}` : ''),
    );
  } finally {
    if (!done) await quietly(() => target.abort());
    phase.leave(false);
    bootLock?.release();
  }
}

export async function injectCommand(bundle: string, opts: InjectCommandOptions & RegistryCliOptions, out: Output): Promise<void> {
  // docker://… (or `registry`) takes the registry options as preload does: --image names the
  // images to pull, and a multi-platform image is resolved for the disk image's device type.
  const registry = isRegistrySource(bundle);
  let deviceArch: string | undefined;
  if (registry && opts.disk && !opts.platform) {
    const { readDeviceArch } = await import('../../disk/disk-target.js');
    deviceArch = (await readDeviceArch(opts.disk)).arch;
  }
  const apps = opts.apps ? await readApps(opts.apps, { pinDevice: opts.pinDevice }) : undefined;
  const source = await openSource(bundle, { spoolStdin: opts.disk !== undefined, registry: registry ? { ...opts, images: opts.image, apps, deviceArch } : undefined });
  try {
    const all = await source.images();
    if (all.length === 0) {
      // An engine root's image whose config is missing or does not match its ID is left out (as the engine does).
      throw new Error(`${bundle} holds no image to inject (none has a config that matches its image ID)`);
    }
    const images = registry || opts.image.length === 0 ? all : selectImages(opts.image, all, bundle);
    await injectFrom(source, images, opts, out, apps);
  } finally {
    await source.close();
  }
}
