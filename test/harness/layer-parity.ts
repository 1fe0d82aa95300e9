/**
 * Layer parity: one layer as `docker load` stored it against the same layer stored by
 * transplant: layerdb diff and size, tar-split bytes, and every file with every attribute
 * (judge.ts). What the engine made at load time (diff/ itself, missing parents, whiteout
 * devices) has the engine's clock as mtime; unless `exactTimes`, those times may differ.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { diffSnapshots, layerDiffDir, snapshotTree, type Snapshot } from './judge.js';

/** Wall-clock window (s) of the engine's load: what it made itself has its times in it. */
export interface LoadWindow {
  from: number;
  to: number;
}

const layerdb = (root: string, chainId: string): string => path.join(root, 'image', 'overlay2', 'layerdb', 'sha256', chainId.slice(7));

function tarSplitOf(root: string, chainId: string): Buffer {
  return gunzipSync(fs.readFileSync(path.join(layerdb(root, chainId), 'tar-split.json.gz')));
}

/** The engine's layer trees, taken once (they are compared with several targets). */
const refSnapshots = new Map<string, Snapshot>();

export function layerParityProblems(engineRoot: string, ours: string, chain: string, e: LoadWindow, exactTimes: boolean): string[] {
  if (!fs.existsSync(layerdb(ours, chain))) return [`layer ${chain} missing`];
  const out: string[] = [];
  for (const f of ['diff', 'size']) {
    const a = fs.readFileSync(path.join(layerdb(engineRoot, chain), f), 'utf8');
    const b = fs.readFileSync(path.join(layerdb(ours, chain), f), 'utf8');
    if (a !== b) out.push(`layerdb ${f} ${JSON.stringify(b)} != ${JSON.stringify(a)} (docker load)`);
  }
  const ta = tarSplitOf(engineRoot, chain);
  const tb = tarSplitOf(ours, chain);
  if (!ta.equals(tb)) {
    const la = ta.toString('utf8').split('\n');
    const lb = tb.toString('utf8').split('\n');
    const i = la.findIndex((l, k) => l !== lb[k]);
    out.push(`tar-split differs at line ${i + 1}:\n    docker load: ${la[i]?.slice(0, 300)}\n    transplant:  ${lb[i]?.slice(0, 300)}`);
  }
  const key = `${engineRoot}:${chain}`;
  const ref = refSnapshots.get(key) ?? snapshotTree(layerDiffDir(engineRoot, chain));
  refSnapshots.set(key, ref);
  const got = snapshotTree(layerDiffDir(ours, chain));
  const madeByEngine = (p: string): boolean => {
    const t = Number(ref.get(p)?.mtime ?? 'NaN');
    return t >= e.from - 2 && t <= e.to + 2;
  };
  const diffs = diffSnapshots(ref, got, { ignoreRootAttributes: !exactTimes }).filter((l) => {
    const m = /^(.*): mtime /.exec(l);
    return exactTimes || !(m && madeByEngine(m[1] as string));
  });
  return [...out, ...diffs];
}
