/**
 * The worker thread behind readDiffTree (diff-tree.ts). A walk starts with
 * { start: { root, maxEntries, maxBytes }, id }; each { id } then asks for the next batch of
 * entries (small files with their content), answered { id, items } (empty at the end) or
 * { id, error }. The worker is reused for the next walk; requests of an earlier walk are ignored.
 */
import { parentPort } from 'node:worker_threads';
import { DiffTreeWalker } from './diff-tree.js';

interface Request {
  id: number;
  start?: { root: string; maxEntries: number; maxBytes: number };
}

let walker: DiffTreeWalker | undefined;
let session = -1;
let limits = { maxEntries: 512, maxBytes: 4 << 20 };
let failed = false;

parentPort?.on('message', (m: Request) => {
  if (m.start) {
    session = m.id;
    walker = new DiffTreeWalker(m.start.root);
    limits = m.start;
    failed = false;
    return;
  }
  if (m.id !== session || failed || !walker) return;
  try {
    parentPort?.postMessage({ id: m.id, items: walker.next(limits.maxEntries, limits.maxBytes) });
  } catch (err) {
    failed = true;
    parentPort?.postMessage({ id: m.id, error: (err as Error).message });
  }
});
