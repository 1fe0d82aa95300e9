/**
 * A layer entry as a tar header and back: the one mapping used by every tar-shaped
 * carrier of diff/ trees (bundles, data-root tarballs, the tar TreeWriter).
 */
import { emptyHeader, type TarHeader } from '../tar/header.js';
import type { LayerEntry } from './entry.js';

const KINDS: readonly string[] = ['file', 'directory', 'symlink', 'hardlink', 'char-device', 'block-device', 'fifo'];

/**
 * The LayerEntry a tar header describes, at `path`. A hard link's target is left for the
 * caller to resolve (it is a path in the tarball, not in the layer).
 */
export function layerEntryFromTar(h: TarHeader, path: string): LayerEntry {
  if (!KINDS.includes(h.type)) throw new Error(`unexpected tar entry type ${h.type} for ${path}`);
  const entry: LayerEntry = {
    path,
    kind: h.type as LayerEntry['kind'],
    mode: h.mode,
    uid: h.uid,
    gid: h.gid,
    mtime: h.mtime,
    atime: h.atime ?? h.mtime,
    size: h.type === 'file' ? h.size : 0,
    xattrs: h.xattrs,
  };
  if (h.type === 'symlink') entry.linkTarget = h.linkname;
  if (h.type === 'char-device' || h.type === 'block-device') {
    entry.devMajor = h.devmajor;
    entry.devMinor = h.devminor;
  }
  return entry;
}

/** The tar header of a LayerEntry named `name`; `linkName` is the tar name of a hard link's target. */
export function tarHeaderOf(entry: LayerEntry, name: string, linkName?: string): TarHeader {
  return {
    ...emptyHeader(),
    name,
    type: entry.kind,
    mode: entry.mode,
    uid: entry.uid,
    gid: entry.gid,
    size: entry.kind === 'file' ? entry.size : 0,
    mtime: entry.mtime,
    atime: entry.atime,
    linkname: entry.kind === 'hardlink' ? (linkName ?? '') : (entry.linkTarget ?? ''),
    devmajor: entry.devMajor ?? 0,
    devminor: entry.devMinor ?? 0,
    xattrs: entry.xattrs,
  };
}
