/** transplant extract: images from a source into a bundle file. */
import { createWriteStream, promises as fs, rmSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { planBundle, writeBundle } from '../../bundle/write.js';
import { formatBytes } from '../../inject/inject.js';
import { describeImages, selectImages } from '../../selection/select.js';
import { openSource } from '../open-source.js';
import { interruptible, onInterrupt } from '../interrupt.js';
import { imagesForApps, readApps } from '../../preload/apps.js';
import { LayerProgressLine } from '../progress.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { isRegistrySource, type RegistryCliOptions } from '../registry-options.js';

export interface ExtractOptions extends RegistryCliOptions {
  from: string;
  image: string[];
  apps?: string;
  output?: string;
  dryRun?: boolean;
  json?: boolean;
  /** --from ssh://…: private key file, and whether to skip the known_hosts check. */
  identity?: string;
  insecureHostKey?: boolean;
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

export async function extractCommand(opts: ExtractOptions, out: Output): Promise<void> {
  if (!opts.output && !opts.dryRun) throw new UsageError('extract needs --output <bundle> (or --dry-run)');
  // A registry source pulls exactly the images named (--image, docker://…/REPO:TAG, --apps).
  const registry = isRegistrySource(opts.from);
  const apps = opts.apps ? await readApps(opts.apps) : undefined;
  const source = await openSource(opts.from, { identity: opts.identity, insecureHostKey: opts.insecureHostKey, registry: { ...opts, images: opts.image, apps } });
  try {
    const all = await source.images();
    if (opts.image.length === 0 && !apps && !registry) {
      throw new Error(`no --image given; ${opts.from} holds:\n${describeImages(all)}\nname the images to take with --image <name:tag | name@sha256:… | ID>`);
    }
    const images = registry ? [...all] : selectImages(opts.image, all, opts.from);
    if (apps) for (const img of imagesForApps(apps, all, opts.from)) if (!images.includes(img)) images.push(img);
    if (opts.dryRun) {
      const { manifest } = await planBundle(source, images);
      out.data(manifest, () =>
        [
          ...manifest.images.map((i) => `image ${i.id.slice(7, 19)} ${i.references.join(', ') || '<none>'} (${i.chainIds.length} layers)`),
          ...manifest.layers.map((l) => `layer ${l.chainId.slice(7, 19)}: ${l.entries} files, ${formatBytes(l.bytes)}`),
          `total: ${manifest.layers.length} layers, ${manifest.layers.reduce((n, l) => n + l.entries, 0)} files, ${formatBytes(manifest.layers.reduce((n, l) => n + l.bytes, 0))}`,
        ].join('\n'),
      );
      return;
    }
    const target = opts.output as string;
    if (target === '-') {
      await writeBundle(source, images, process.stdout, new LayerProgressLine('extract'));
      return;
    }
    // Written beside the target and renamed into place: never a partial bundle under its name.
    // Named with our pid, so that the partial bundle of a killed extract (its pid gone) is
    // recognised and removed by the next extract to the same name.
    await removeDeadPartials(path.dirname(target), path.basename(target));
    const partial = path.join(path.dirname(target), `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
    const file = createWriteStream(partial, { flags: 'wx', highWaterMark: 1 << 20 });
    // A signal exits at once (nothing was changed but this file): it goes too.
    const forget = onInterrupt(() => rmSync(partial, { force: true }));
    try {
      await once(file, 'open');
      const manifest = await writeBundle(interruptible(source), images, file, new LayerProgressLine('extract'));
      file.end();
      await once(file, 'finish');
      await fs.rename(partial, target);
      const bytes = (await fs.stat(target)).size;
      out.data({ output: target, images: manifest.images, layers: manifest.layers.length, bytes }, () =>
        `wrote ${target}: ${manifest.images.length} images, ${manifest.layers.length} layers, ${formatBytes(bytes)}`,
      );
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
