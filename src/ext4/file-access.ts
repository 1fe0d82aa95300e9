import type { FileKind, LayerFileAccess } from '../verify/verify.js';
import { FT_DIR, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from './inode.js';
import { ROOT_INO, type Ext4Tree } from './tree.js';

/** Path bytes ('/'-separated, relative) to directory-entry keys (latin1 strings of the bytes); see tree.ts nameKey. */
function keysOf(rel: Buffer): string[] {
  return rel.toString('latin1').split('/').filter((c) => c !== '' && c !== '.');
}

/** Inode at a byte path, following no symlink; undefined when absent. */
export function lookupBytes(tree: Ext4Tree, rel: Buffer): number | undefined {
  let ino = ROOT_INO;
  let dir = true;
  for (const key of keysOf(rel)) {
    // The entry's file_type byte says directory; loading it checks the inode's mode.
    if (key === '..' || !dir) return undefined;
    const e = tree.entry(ino, key);
    if (!e) return undefined;
    dir = e.type === FT_DIR;
    ino = e.ino;
  }
  return ino;
}

/**
 * Layer files read straight from the ext4 engine for `verify`: streamed content, and every
 * attribute the whiteout checks need (device numbers, trusted.overlay.opaque).
 */
export function ext4FileAccess(tree: () => Ext4Tree): LayerFileAccess {
  return {
    open: (rel) =>
      (async function* () {
        const t = tree();
        t.trimCache();
        const ino = lookupBytes(t, rel);
        if (ino === undefined || (t.info(ino).mode & S_IFMT) !== S_IFREG) throw new Error('no such file');
        yield* t.vol.streamFile(ino);
      })(),
    inspect: async (rel): Promise<FileKind> => {
      const t = tree();
      t.trimCache();
      const ino = lookupBytes(t, rel);
      if (ino === undefined) return { kind: 'missing' };
      const info = t.info(ino);
      switch (info.mode & S_IFMT) {
        case S_IFREG: return { kind: 'file' };
        case S_IFLNK: return { kind: 'symlink' };
        case S_IFCHR: return { kind: 'char-device', rdev: info.rdev };
        case S_IFDIR: {
          const opaque = t.xattrs(ino).some((x) => x.name === 'trusted.overlay.opaque' && x.value.toString('latin1') === 'y');
          return { kind: 'directory', opaque };
        }
        default: return { kind: 'other' };
      }
    },
  };
}
