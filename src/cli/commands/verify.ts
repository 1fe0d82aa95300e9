/** transplant verify: checks an engine root, resin-data, disk image or bundle without an engine. */
import { verify, type VerifyResult } from '../../api/verify.js';
import { TransplantError } from '../../errors.js';
import { interruptSignal } from '../interrupt.js';
import { count, type Output } from '../output.js';
import { ProgressLine, progressMode } from '../progress.js';

export interface VerifyCommandOptions {
  image: string[];
  json?: boolean;
  /** --progress auto|tty|plain|none, --quiet */
  progress?: string;
  quiet?: boolean;
}

export function formatReport(r: VerifyResult): string {
  const head = `${r.target}: ${count(r.imageCount, 'image')}, ${count(r.layerCount, 'layer')} checked`;
  if (r.ok) return `${head}: OK`;
  return [`${head}: ${count(r.problems.length, 'problem')}`, ...r.problems.map((p) => `  ${p}`)].join('\n');
}

/** A store that does not hold: exit 1 (a check that could not run exits 2, main.ts). */
export class StoreInvalid extends TransplantError {
  constructor(r: VerifyResult) {
    super('VERIFY_FAILED', `verification of ${r.target} failed: ${r.problems[0]}${r.problems.length > 1 ? ` (and ${count(r.problems.length - 1, 'more problem')})` : ''}`);
  }
}

export async function verifyCommand(target: string, opts: VerifyCommandOptions, out: Output): Promise<void> {
  const progress = new ProgressLine(progressMode(opts));
  let report;
  try {
    report = await verify(target, { image: opts.image, signal: interruptSignal, onProgress: progress.listener });
  } finally {
    progress.end();
  }
  out.data(report, () => formatReport(report));
  if (!report.ok) throw new StoreInvalid(report);
}
