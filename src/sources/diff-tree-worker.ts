/**
 * The worker thread behind readDiffTree (diff-tree.ts). A walk starts with
 * { start: { root, rel, maxEntries, maxBytes }, id }; each { id } then asks for the next batch
 * of entries (small files with their content), answered { id, items } (empty at the end) or
 * { id, error }; { id, close: true } stops it (its directories closed), answered
 * { id, closed: true }. The worker is reused for the next walk; requests of an earlier walk
 * are ignored.
 */
import { parentPort } from 'node:worker_threads';
import { DiffTreeWalker } from './diff-tree.js';

interface Request {
  id: number;
  start?: { root: string; rel: string; maxEntries: number; maxBytes: number };
  close?: boolean;
}

let walker: DiffTreeWalker | undefined;
let session = -1;
let limits = { maxEntries: 512, maxBytes: 4 << 20 };
let failed = false;

parentPort?.on('message', (m: Request) => {
  if (m.start) {
    walker?.close();
    session = m.id;
    walker = new DiffTreeWalker(m.start.root, m.start.rel);
    limits = m.start;
    failed = false;
    return;
  }
  if (m.close) {
    if (m.id === session) {
      walker?.close();
      walker = undefined;
    }
    parentPort?.postMessage({ id: m.id, closed: true });
    return;
  }
  if (m.id !== session || failed || !walker) return;
  try {
    const items = walker.next(limits.maxEntries, limits.maxBytes);
    if (items.length === 0) walker.close();
    // The small files' content is moved, not copied: the walker reads every batch into a new ArrayBuffer.
    const moved = walker.batchBuffer();
    parentPort?.postMessage({ id: m.id, items }, moved ? [moved] : []);
  } catch (err) {
    failed = true;
    walker.close();
    parentPort?.postMessage({ id: m.id, error: (err as Error).message });
  }
});
