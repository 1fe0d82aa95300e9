/**
 * Byte counts given on the command line (`--additional-space`): a plain integer as balena
 * preload takes it, or with a unit: k/K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB. Single letters
 * and *iB are powers of 1024 (as `truncate -s` and docker's RAMInBytes read them), *B are
 * powers of 1000 (as `truncate -s` reads KB/MB/GB).
 */
const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kib: 1024, kb: 1000,
  m: 1024 ** 2, mib: 1024 ** 2, mb: 1000 ** 2,
  g: 1024 ** 3, gib: 1024 ** 3, gb: 1000 ** 3,
  t: 1024 ** 4, tib: 1024 ** 4, tb: 1000 ** 4,
};

/** Parses a size; throws one line naming the option when it is not one. */
export function parseByteSize(text: string, option: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[(m[2] as string).toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new Error(`${option} ${JSON.stringify(text)}: not a size; give bytes (e.g. 1073741824) or a number with a unit (512M, 2G, 1.5GiB)`);
  }
  const bytes = Math.ceil(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new Error(`${option} ${text}: too large`);
  return bytes;
}
