/** extract: images from a source into a bundle file. */
import { createWriteStream, promises as fs, rmSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { planBundle, writeBundle } from '../bundle/write.js';
import type { BundleManifest } from '../bundle/format.js';
import { describeImages, selectImages } from '../selection/select.js';
import { openSource } from '../sources/open.js';
import { isRegistrySource } from '../sources/open-registry.js';
import { imagesForApps, readApps } from '../preload/apps.js';
import { abortableSource, onAbort } from '../run/abort.js';
import { UsageError } from '../errors.js';
import { ProgressEvents } from './progress.js';
import { libraryCall, type RunOptions, type SourceOptions } from './options.js';

export interface ExtractOptions extends RunOptions, SourceOptions {
  /**
   * Where the images come from: an engine data root (or a directory holding one), a
   * data-root tarball ('-' for standard input), a bundle, ssh://…, a docker save / OCI
   * archive, docker://… or 'registry'.
   */
  from: string;
  /** The images to take: name[:tag], name@sha256:…, an image ID or a unique ID prefix (12+ hex). */
  image?: string[];
  /** Also take every service image of this apps.json / device state file. */
  apps?: string;
  /** The bundle file to write. Required unless `dryRun` or `stream` is given. */
  output?: string;
  /** Write the bundle to this stream instead of a file (the CLI's `--output -`). */
  stream?: Writable;
  /** Plan only: say what would go into the bundle, write nothing. */
  dryRun?: boolean;
}

export interface ExtractImage {
  id: string;
  references: string[];
  os: string;
  architecture: string;
  /** The ChainIDs of its layers, base first. */
  chainIds: string[];
  layerCount: number;
}

export interface ExtractLayer {
  chainId: string;
  diffId: string;
  parent: string | null;
  /** layerdb size: bytes of file content as the engine counted them. */
  size: number;
  /** diff/ entries (the root included) and content bytes (hard links counted once). */
  fileCount: number;
  bytes: number;
}

export interface ExtractResult {
  dryRun: boolean;
  /** The bundle written (null for a dry run or a stream). */
  output: string | null;
  images: ExtractImage[];
  layers: ExtractLayer[];
  imageCount: number;
  layerCount: number;
  fileCount: number;
  /** Content bytes of every layer. */
  bytes: number;
  /** Size of the bundle file written (null for a dry run or a stream). */
  bundleSize: number | null;
}

function result(manifest: BundleManifest, dryRun: boolean, output: string | null, bundleSize: number | null): ExtractResult {
  const layers = manifest.layers.map((l) => ({ chainId: l.chainId, diffId: l.diffId, parent: l.parent ?? null, size: l.size, fileCount: l.entries, bytes: l.bytes }));
  return {
    dryRun,
    output,
    images: manifest.images.map((i) => ({ id: i.id, references: i.references, os: i.os, architecture: i.architecture, chainIds: i.chainIds, layerCount: i.chainIds.length })),
    layers,
    imageCount: manifest.images.length,
    layerCount: layers.length,
    fileCount: layers.reduce((n, l) => n + l.fileCount, 0),
    bytes: layers.reduce((n, l) => n + l.bytes, 0),
    bundleSize,
  };
}

/** Removes `.<base>.partial-<pid>-<hex>` files whose process no longer exists. */
async function removeDeadPartials(dir: string, base: string): Promise<void> {
  const prefix = `.${base}.partial-`;
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter((n) => n.startsWith(prefix));
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^(\d+)-[0-9a-f]{8}$/.exec(name.slice(prefix.length));
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') await fs.rm(path.join(dir, name), { force: true });
    }
  }
}

async function extractIn(opts: ExtractOptions): Promise<ExtractResult> {
  if (!opts.output && !opts.stream && !opts.dryRun) throw new UsageError('extract needs --output <bundle> (or --dry-run)');
  const wanted = opts.image ?? [];
  // A registry source pulls exactly the images named (--image, docker://…/REPO:TAG, --apps).
  const registry = isRegistrySource(opts.from);
  const apps = opts.apps ? await readApps(opts.apps) : undefined;
  const source = await openSource(opts.from, {
    identity: opts.identity,
    insecureHostKey: opts.insecureHostKey,
    registry: { ...opts, images: wanted, apps },
    warn: opts.onWarning,
  });
  const progress = opts.onProgress ? new ProgressEvents('extract', opts.onProgress) : undefined;
  try {
    const all = await source.images();
    if (wanted.length === 0 && !apps && !registry) {
      throw new Error(
        `no --image given; ${opts.from} holds:\n${describeImages(all)}\nname the images to take with --image <name:tag | name@sha256:… | ID>`,
      );
    }
    const images = registry ? [...all] : selectImages(wanted, all, opts.from);
    if (apps) for (const img of imagesForApps(apps, all, opts.from)) if (!images.includes(img)) images.push(img);
    if (opts.dryRun) return result((await planBundle(source, images)).manifest, true, null, null);
    if (opts.stream) return result(await writeBundle(abortableSource(source), images, opts.stream, progress), false, null, null);
    const target = opts.output as string;
    // Written beside the target and renamed into place: never a partial bundle under its name.
    // Named with our pid, so that the partial bundle of a killed extract (its pid gone) is
    // recognised and removed by the next extract to the same name.
    await removeDeadPartials(path.dirname(target), path.basename(target));
    const partial = path.join(path.dirname(target), `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
    const file = createWriteStream(partial, { flags: 'wx', highWaterMark: 1 << 20 });
    // Aborted, nothing was changed but this file: it goes too.
    const forget = onAbort(() => rmSync(partial, { force: true }));
    try {
      await once(file, 'open');
      const manifest = await writeBundle(abortableSource(source), images, file, progress);
      file.end();
      await once(file, 'finish');
      await fs.rename(partial, target);
      return result(manifest, false, target, (await fs.stat(target)).size);
    } catch (e) {
      // A write still queued fails once the stream is destroyed: that is not the run's error
      // (unhandled, it crashed the process and left the partial file behind).
      file.on('error', () => undefined);
      file.destroy();
      if (!file.closed) await once(file, 'close').catch(() => undefined);
      await fs.rm(partial, { force: true });
      throw e;
    } finally {
      forget();
    }
  } finally {
    await source.close();
  }
}

/** Writes the selected images of a source into a bundle file (what `transplant extract --json` prints). */
export async function extract(options: ExtractOptions): Promise<ExtractResult> {
  return libraryCall(options, () => extractIn(options), options.from);
}
