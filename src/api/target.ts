/**
 * The targets a run writes into: a mounted resin-data, an engine data root, or a balenaOS
 * disk image, each opened under an exclusive lock for the whole run.
 */
import * as path from 'node:path';
import { existsSync, promises as fs } from 'node:fs';
import { formatBytes } from '../inject/inject.js';
import type { InjectPlan } from '../inject/plan.js';
import { findLiveEngine } from '../targets/live-engine.js';
import { HostTreeWriter } from '../targets/host-fs.js';
import type { TreeWriter } from '../targets/tree-writer.js';
import { TargetLock, lockFile, lockFiles } from '../targets/target-lock.js';
import { ReadOnlyTreeWriter } from '../targets/read-only.js';
import { FLASHER_BOOT_LABELS, bootLocation, type BootLocation } from '../balena/boot-partition.js';
import { refuseSecureBootImage } from '../balena/secure-boot.js';
import { parseByteSize } from '../disk/size.js';
import { TransplantError, UsageError } from '../errors.js';

/** Where a run writes (exactly one of resinData, engineRoot, disk). */
export interface TargetOptions {
  /** Plan only: say what would be written, write nothing (and take no lock). */
  dryRun?: boolean;
  /** A mounted balenaOS data partition (its engine root is docker/). */
  resinData?: string;
  /** An engine data root (e.g. /var/lib/docker) whose engine is stopped. */
  engineRoot?: string;
  /** A balenaOS disk image, written without mounting (through a work copy) and grown when too small. */
  disk?: string;
  /** With disk: write the result here and leave the input image untouched. */
  output?: string;
  /** Write even though an engine seems to be running on the target; inject images of another architecture. */
  force?: boolean;
  /** false: fail at once (TARGET_BUSY) when another run holds the target, instead of waiting. */
  wait?: boolean;
  /** With disk: bytes resin-data keeps free beyond what the images need (disk/size.ts syntax: 500M, 2GiB, …). */
  additionalSpace?: string;
  /** Inject images the device's architecture cannot run (warned); balena's --dont-check-arch. */
  dontCheckArch?: boolean;
  /** Internal: disk is a private work copy of the user's image (disk/compressed-image.ts), written in place. */
  adoptDisk?: { shownAs: string };
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
  /** Before commit: the room additionalSpace asks for, also when there was nothing to copy. */
  ensureAdditionalSpace?: () => Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

async function assertDirectory(dir: string, option: string): Promise<void> {
  let st;
  try {
    st = await fs.stat(dir);
  } catch {
    throw new TransplantError('NOT_FOUND', `${option} ${dir}: no such directory`);
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
    const { needsTranscoding, openTranscoded } = await import('../disk/compressed-image.js');
    const shownAs = opts.disk;
    if (needsTranscoding(opts.disk, opts.dryRun ? undefined : opts.output)) {
      return openTranscoded({ disk: opts.disk, output: opts.output, dryRun: opts.dryRun }, (work) => openTarget({ ...opts, disk: work, output: undefined, adoptDisk: { shownAs } }, notify));
    }
  }
  if (opts.disk) {
    const { openDiskTarget, readDeviceArch, estimateRoom, flasherRootA, realImagePath } = await import('../disk/disk-target.js');
    const device = await readDeviceArch(opts.disk);
    await refuseSecureBootImage(opts.disk);
    if (opts.dryRun && !flasherRootA(opts.disk)) {
      // Planning reads resin-data in place, through a disk that keeps writes in memory.
      const { DiskImageReader } = await import('../disk/read-only.js');
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
      throw new TransplantError('TARGET_BUSY', `an engine (pid ${pid}) is running on ${engineRoot}; stop it first (writing under a live engine corrupts it), or pass --force`);
    }
  } catch (err) {
    lock.release();
    throw err;
  }
  const writer = new HostTreeWriter(dir);
  return releasingOnEnd({ writer, prefix, commit: () => writer.close(), abort: () => writer.close() }, lock);
}

