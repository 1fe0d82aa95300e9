/**
 * The worker thread behind readDiffTree (diff-tree.ts): walks one layer's diff/ directory
 * with synchronous calls and answers each 'more' message with the next batch of entries
 * (small files with their content), then an empty batch at the end, or { error }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { DiffTreeWalker } from './diff-tree.js';

const { root, maxEntries, maxBytes } = workerData as { root: string; maxEntries: number; maxBytes: number };
const walker = new DiffTreeWalker(root);
let failed = false;

parentPort?.on('message', () => {
  if (failed) return;
  try {
    parentPort?.postMessage({ items: walker.next(maxEntries, maxBytes) });
  } catch (err) {
    failed = true;
    parentPort?.postMessage({ error: (err as Error).message });
  }
});
