/**
 * balena preload's (balena-cli src/commands/preload) names for what transplant already
 * does, folded into transplant's own: `--pin-device-to-release` / `--no-pin-device-to-release`
 * (-p) into --pin-device, and the image as the positional argument of `preload` into
 * --disk. Either name may be given, not both with different values.
 */
export interface BalenaFlagNames {
  pinDevice?: boolean;
  pinDeviceToRelease?: boolean;
  disk?: string;
  /** balena preload's --fleet / --commit: a release fetched from balenaCloud, which transplant does not do. */
  fleet?: string;
  commit?: string;
}

export class FlagConflict extends Error {}

export function withBalenaNames<T extends BalenaFlagNames>(opts: T, positionalImage?: string): T {
  if (opts.fleet !== undefined || opts.commit !== undefined) {
    throw new FlagConflict(
      `${opts.fleet !== undefined ? '--fleet' : '--commit'}: transplant does not fetch a release from balenaCloud; give the release's target state with --apps <file> (the device state from the API or the dashboard's copy) and take its images with --from registry`,
    );
  }
  const out: T = { ...opts };
  if (opts.pinDeviceToRelease !== undefined) {
    if (opts.pinDevice !== undefined && opts.pinDevice !== opts.pinDeviceToRelease) {
      throw new FlagConflict('--pin-device and --no-pin-device-to-release (or the reverse) contradict each other; give one');
    }
    out.pinDevice = opts.pinDeviceToRelease;
  }
  delete out.pinDeviceToRelease;
  delete out.fleet;
  delete out.commit;
  if (positionalImage !== undefined) {
    if (opts.disk !== undefined && opts.disk !== positionalImage) {
      throw new FlagConflict(`two disk images given: ${positionalImage} (argument) and --disk ${opts.disk}; give one`);
    }
    out.disk = positionalImage;
  }
  return out;
}
