/**
 * The device type a mounted resin-boot (or an image's boot partition) is for, from its
 * `device-type.json` (`arch`, `slug`): what the architecture check of a run into a
 * mounted resin-data (`--resin-data` with `--resin-boot`) compares images against.
 */
import { describeBoot, readBootFile, type BootLocation } from './boot-partition.js';

/** undefined when device-type.json is absent or names no architecture (then nothing can be checked). */
export async function bootDeviceArch(loc: BootLocation): Promise<{ arch: string; slug: string } | undefined> {
  const raw = await readBootFile(loc, 'device-type.json');
  if (raw === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new Error(`${describeBoot(loc)}/device-type.json is not valid JSON; the device's architecture cannot be checked (pass --dont-check-arch to go on without)`);
  }
  const o = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { arch?: unknown; slug?: unknown };
  if (typeof o.arch !== 'string' || o.arch === '') return undefined;
  return { arch: o.arch, slug: typeof o.slug === 'string' ? o.slug : 'unknown device type' };
}
