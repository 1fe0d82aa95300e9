/**
 * transplant preload: extract and inject in one pass, streaming from the source to the
 * target with no intermediate bundle on disk.
 */
import { selectImages } from '../../selection/select.js';
import type { SourceImage } from '../../sources/source.js';
import { imagesForApps, readApps } from '../../preload/apps.js';
import { openSource } from '../open-source.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { injectFrom, type InjectCommandOptions } from './inject.js';
import { isRegistrySource, type RegistryCliOptions } from '../registry-options.js';

export interface PreloadOptions extends InjectCommandOptions, RegistryCliOptions {
  from: string;
  identity?: string;
  insecureHostKey?: boolean;
}

export async function preloadCommand(opts: PreloadOptions, out: Output): Promise<void> {
  const registry = isRegistrySource(opts.from);
  if (opts.image.length === 0 && !opts.apps && !/^docker:\/\/[^/]+\/./i.test(opts.from)) throw new UsageError('preload needs --apps <file> or at least one --image');
  const apps = opts.apps ? await readApps(opts.apps, { pinDevice: opts.pinDevice }) : undefined;
  // From a registry, a multi-platform image is resolved for the disk image's device type.
  let deviceArch: string | undefined;
  if (registry && opts.disk && !opts.platform) {
    const { readDeviceArch } = await import('../../disk/disk-target.js');
    deviceArch = (await readDeviceArch(opts.disk)).arch;
  }
  const source = await openSource(opts.from, { identity: opts.identity, insecureHostKey: opts.insecureHostKey, registry: { ...opts, images: opts.image, apps, deviceArch }, spoolStdin: opts.disk !== undefined });
  try {
    const all = await source.images();
    // A registry source pulled exactly the images named (--image, docker://…/REPO:TAG, --apps).
    const images: SourceImage[] = registry ? [...all] : selectImages(opts.image, all, opts.from);
    if (apps) for (const img of imagesForApps(apps, all, opts.from, { inTarget: true })) if (!images.includes(img)) images.push(img);
    await injectFrom(source, images, opts, out, apps);
  } finally {
    await source.close();
  }
}
