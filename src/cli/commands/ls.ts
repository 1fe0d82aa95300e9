/** transplant ls: the images a directory, bundle or disk image holds, and its apps.json. */
import { formatBytes } from '../../inject/inject.js';
import { formatAppsStatus } from '../../preload/apps.js';
import { ls, type LsImage } from '../../api/ls.js';
import { interruptSignal } from '../interrupt.js';
import { refuseTerminal, type Output } from '../output.js';
import type { RegistryCliOptions } from '../registry-options.js';

export interface LsCommandOptions extends RegistryCliOptions {
  json?: boolean;
  identity?: string;
  insecureHostKey?: boolean;
  image?: string[];
}

export function formatListing(images: readonly LsImage[]): string {
  if (images.length === 0) return '(no images)';
  const rows = images.map((i) => [i.id.slice(7, 19), `${i.os}/${i.architecture}`, formatBytes(i.size), String(i.layerCount), (i.references.join(', ') || '<none>') + (i.supervisor ? ' [supervisor]' : '')]);
  const head = ['IMAGE ID', 'PLATFORM', 'SIZE', 'LAYERS', 'REFERENCES'];
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  return [head, ...rows].map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n');
}

/** Text: the table, then the apps.json status when there is one. JSON: always `{ images, appsJson }` (appsJson null when absent). */
export async function lsCommand(target: string, opts: LsCommandOptions, out: Output): Promise<void> {
  refuseTerminal({ input: target });
  const result = await ls(target, { ...opts, signal: interruptSignal, onWarning: (m) => out.warn(m) });
  out.data(result, () => (result.appsJson === null ? formatListing(result.images) : `${formatListing(result.images)}\n\n${formatAppsStatus(result.appsJson)}`));
}
