/**
 * preload: extract and inject in one pass, streaming from the source to the target with no
 * intermediate bundle on disk.
 */
import { selectImages } from '../selection/select.js';
import type { SourceImage } from '../sources/source.js';
import { openSource } from '../sources/open.js';
import { isRegistrySource } from '../sources/open-registry.js';
import { imagesForApps, readApps } from '../preload/apps.js';
import { UsageError } from '../errors.js';
import { injectFrom, type InjectOptions, type InjectResult } from './inject.js';
import { libraryCall, type SourceOptions } from './options.js';

export interface PreloadOptions extends InjectOptions, SourceOptions {
  /** Any source extract takes. */
  from: string;
}

export type PreloadResult = InjectResult;

async function preloadIn(opts: PreloadOptions): Promise<PreloadResult> {
  const wanted = opts.image ?? [];
  const registry = isRegistrySource(opts.from);
  if (wanted.length === 0 && !opts.apps && !/^docker:\/\/[^/]+\/./i.test(opts.from)) throw new UsageError('preload needs --apps <file> or at least one --image');
  const apps = opts.apps ? await readApps(opts.apps, { pinDevice: opts.pinDevice }) : undefined;
  // From a registry, a multi-platform image is resolved for the disk image's device type.
  let deviceArch: string | undefined;
  if (registry && opts.disk && !opts.platform) {
    const { readDeviceArch } = await import('../disk/disk-target.js');
    deviceArch = (await readDeviceArch(opts.disk)).arch;
  }
  const source = await openSource(opts.from, {
    identity: opts.identity,
    insecureHostKey: opts.insecureHostKey,
    registry: { ...opts, images: wanted, apps, deviceArch },
    spoolStdin: opts.disk !== undefined,
    warn: opts.onWarning,
  });
  try {
    const all = await source.images();
    // A registry source pulled exactly the images named (--image, docker://…/REPO:TAG, --apps).
    const images: SourceImage[] = registry ? [...all] : selectImages(wanted, all, opts.from);
    if (apps) for (const img of imagesForApps(apps, all, opts.from, { inTarget: true })) if (!images.includes(img)) images.push(img);
    return await injectFrom(source, images, opts, apps);
  } finally {
    await source.close();
  }
}

/** Takes images from a source straight into a target (what `transplant preload --json` prints). */
export async function preload(options: PreloadOptions): Promise<PreloadResult> {
  return libraryCall(options, () => preloadIn(options));
}
