/**
 * A layer tree with every entry kind and attribute, as LayerItems, plus what a kernel
 * mount must show for it; and a reader of what a mounted tree really holds, using the
 * external tools (find, stat, getfattr) as judges.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { LayerEntry, LayerItem, Xattr } from '../../src/layer/entry.js';
import type { TreeWriter } from '../../src/targets/tree-writer.js';
import { runOk } from './exec.js';

export interface ExpectedFile {
  kind: 'f' | 'd' | 'l' | 'c' | 'b' | 'p';
  mode: number;
  uid: number;
  gid: number;
  mtime: bigint;
  atime: bigint;
  size?: number;
  sha256?: string;
  linkTarget?: string;
  dev?: [number, number];
  xattrs: Record<string, string>; // name -> hex
  /** Another path that must share the inode. */
  sameInodeAs?: string;
}

export interface BuiltTree {
  items: () => AsyncGenerator<LayerItem>;
  expected: Map<string, ExpectedFile>;
  bytes: number;
  inodes: number;
}

/** Deterministic pseudo-random bytes, generated in pieces (never the whole file in memory). */
export async function* pseudoRandom(size: number, seed: number): AsyncGenerator<Buffer> {
  let x = seed >>> 0 || 1;
  const piece = 256 * 1024;
  for (let done = 0; done < size; done += piece) {
    const n = Math.min(piece, size - done);
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i + 4 <= n; i += 4) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      b.writeUInt32LE(x, i);
    }
    for (let i = n - (n % 4); i < n; i++) b[i] = i & 0xff;
    yield b;
  }
}

async function digest(size: number, seed: number): Promise<string> {
  const h = createHash('sha256');
  for await (const b of pseudoRandom(size, seed)) h.update(b);
  return h.digest('hex');
}

/** A valid VFS v2 file capability (include/uapi/linux/capability.h): cap_net_bind_service, effective. */
export const CAPABILITY = (() => {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(0x02000001, 0); // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
  b.writeUInt32LE(1 << 10, 4); // permitted, low word
  return b;
})();

/** A POSIX ACL in the VFS xattr format (posix_acl_xattr.h): user::rwx user:1234:r-- group::r-x mask::r-x other::r--. */
export const ACL = (() => {
  const entries: Array<[number, number, number]> = [
    [0x01, 7, 0xffffffff], [0x02, 4, 1234], [0x04, 5, 0xffffffff], [0x10, 5, 0xffffffff], [0x20, 4, 0xffffffff],
  ];
  const b = Buffer.alloc(4 + entries.length * 8);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + i * 8);
    b.writeUInt16LE(perm, 6 + i * 8);
    b.writeUInt32LE(id, 8 + i * 8);
  });
  return b;
})();

const T0 = 1_700_000_000_123_456_789n;

/** The full-coverage tree. `manyFiles` entries go into one directory. */
export async function fullTree(manyFiles = 3000): Promise<BuiltTree> {
  const entries: Array<{ entry: LayerEntry; seed?: number }> = [];
  const expected = new Map<string, ExpectedFile>();
  let bytes = 0;
  let t = T0;
  const add = (e: Partial<LayerEntry> & Pick<LayerEntry, 'path' | 'kind'>, seed?: number, exp?: Partial<ExpectedFile>) => {
    t += 1_000_003n;
    const entry: LayerEntry = { mode: 0o644, uid: 0, gid: 0, mtime: t, atime: t + 7n, size: 0, xattrs: [], ...e };
    entries.push({ entry, seed });
    bytes += entry.size;
    if (entry.kind === 'hardlink') return;
    const kind = ({ file: 'f', directory: 'd', symlink: 'l', 'char-device': 'c', 'block-device': 'b', fifo: 'p' } as const)[entry.kind];
    const xattrs: Record<string, string> = {};
    for (const x of entry.xattrs) xattrs[x.name] = x.value.toString('hex');
    expected.set(entry.path, {
      kind, mode: entry.mode, uid: entry.uid, gid: entry.gid, mtime: entry.mtime, atime: entry.atime,
      size: entry.kind === 'file' ? entry.size : undefined, linkTarget: entry.kind === 'symlink' ? entry.linkTarget : undefined,
      dev: entry.kind === 'char-device' || entry.kind === 'block-device' ? [entry.devMajor ?? 0, entry.devMinor ?? 0] : undefined,
      xattrs, ...exp,
    });
  };
  const x = (name: string, value: string | Buffer): Xattr => ({ name, value: Buffer.isBuffer(value) ? value : Buffer.from(value) });

  add({ path: '.', kind: 'directory', mode: 0o755 });
  add({ path: 'bin', kind: 'directory', mode: 0o755, uid: 100000, gid: 200000 });
  add({ path: 'bin/su', kind: 'file', mode: 0o4755, uid: 100000, gid: 200000, size: 4096 + 17, xattrs: [x('security.capability', CAPABILITY)] }, 1);
  add({ path: 'bin/su-hard', kind: 'hardlink', linkTarget: 'bin/su' });
  expected.get('bin/su')!.sameInodeAs = undefined;
  add({ path: 'bin/big', kind: 'file', mode: 0o2755, uid: 0, gid: 50, size: 5 * 1024 * 1024 + 123 }, 2);
  add({ path: 'bin/sticky', kind: 'directory', mode: 0o1777 });
  add({ path: 'bin/link', kind: 'symlink', mode: 0o777, linkTarget: 'su', uid: 100000, gid: 200000 });
  add({ path: 'bin/longlink', kind: 'symlink', mode: 0o777, linkTarget: 'x/'.repeat(100) + 'end' });
  // More than fits inside a 256-byte inode: an external xattr block (a POSIX ACL, converted
  // to ext4's disk format and back by the kernel, and a long user attribute).
  add({ path: 'bin/acl', kind: 'file', mode: 0o754, uid: 1, gid: 2, size: 10, xattrs: [x('system.posix_acl_access', ACL), x('user.big', 'v'.repeat(300)), x('security.capability', CAPABILITY)] }, 6);
  add({ path: 'bin/acl-dir', kind: 'directory', mode: 0o755, xattrs: [x('system.posix_acl_default', ACL), x('trusted.overlay.opaque', 'y'), x('user.long', 'w'.repeat(120))] });
  add({ path: 'opaque', kind: 'directory', mode: 0o750, xattrs: [x('trusted.overlay.opaque', 'y'), x('user.note', 'hello')] });
  add({ path: 'opaque/gone', kind: 'char-device', mode: 0, devMajor: 0, devMinor: 0 });
  add({ path: 'opaque/gone-too', kind: 'hardlink', linkTarget: 'opaque/gone' });
  add({ path: 'dev', kind: 'directory', mode: 0o755 });
  add({ path: 'dev/null', kind: 'char-device', mode: 0o666, devMajor: 1, devMinor: 3 });
  add({ path: 'dev/sda', kind: 'block-device', mode: 0o660, gid: 6, devMajor: 8, devMinor: 0 });
  add({ path: 'dev/wide', kind: 'char-device', mode: 0o600, devMajor: 300, devMinor: 70000 });
  add({ path: 'dev/fifo', kind: 'fifo', mode: 0o644 });
  add({ path: 'names', kind: 'directory', mode: 0o755 });
  add({ path: 'names/' + 'n'.repeat(255), kind: 'file', mode: 0o600, size: 5 }, 3);
  add({ path: 'names/héllo wörld ✓ 日本', kind: 'file', mode: 0o640, size: 100, xattrs: [x('user.a', 'b'), x('user.checksum', Buffer.alloc(16, 0xab))] }, 4);
  add({ path: 'names/empty', kind: 'file', mode: 0o444, size: 0 });
  add({ path: 'names/y2038', kind: 'file', mode: 0o644, size: 1, mtime: (2n ** 31n + 5n) * 1_000_000_000n + 42n, atime: 1_000_000_000_000_000_001n }, 5);
  add({ path: 'many', kind: 'directory', mode: 0o755 });
  for (let i = 0; i < manyFiles; i++) {
    add({ path: `many/file-${String(i).padStart(5, '0')}`, kind: 'file', mode: 0o644, uid: 1000 + (i % 7), gid: 1000, size: i % 5 === 0 ? 0 : 10 + (i % 300) }, 100 + i);
  }
  // Directory times are set after their children were written (finishTree).
  for (const e of entries) {
    const exp = expected.get(e.entry.path);
    if (exp && e.seed !== undefined) exp.sha256 = await digest(e.entry.size, e.seed);
  }
  expected.get('bin/su')!.sameInodeAs = 'bin/su-hard';
  expected.get('opaque/gone')!.sameInodeAs = 'opaque/gone-too';

  async function* items(): AsyncGenerator<LayerItem> {
    for (const e of entries) {
      yield { entry: e.entry, content: e.entry.kind === 'file' ? pseudoRandom(e.entry.size, e.seed ?? 0) : undefined };
    }
  }
  return { items, expected, bytes, inodes: entries.length };
}

/** Writes a tree through a TreeWriter below `root` (created first). */
export async function writeTree(w: TreeWriter, root: string, tree: BuiltTree): Promise<void> {
  await w.mkdirp(root, 0o755);
  for await (const item of tree.items()) await w.writeEntry(root, item.entry, item.content);
  await w.finishTree(root);
}

function unescapeGetfattr(s: string): string {
  // getfattr escapes non-printable bytes of names as \ooo (octal)
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      bytes.push(...Buffer.from(s[i], 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function nsFromFind(s: string): bigint {
  // find's %T@ prints seconds '.' 10 fraction digits (the last one always 0)
  const [sec, frac = '0'] = s.split('.');
  const neg = sec.startsWith('-');
  const v = BigInt(sec) * 1_000_000_000n + (neg ? -1n : 1n) * BigInt(frac.padEnd(9, '0').slice(0, 9));
  return v;
}

/** Compares a mounted tree at `dir` with the expected records; returns the differences. */
export function compareMounted(dir: string, expected: Map<string, ExpectedFile>, opts: { secondsOnly?: boolean } = {}): string[] {
  // 128-byte inodes keep whole seconds in a signed 32-bit field (the kernel clamps).
  const t = (ns: bigint) => {
    if (!opts.secondsOnly) return ns;
    let sec = ns / 1_000_000_000n;
    if (ns < 0n && ns % 1_000_000_000n !== 0n) sec -= 1n;
    sec = sec > 0x7fffffffn ? 0x7fffffffn : sec < -0x80000000n ? -0x80000000n : sec;
    return sec * 1_000_000_000n;
  };
  const problems: string[] = [];
  const out = runOk('find', ['.', '-printf', '%P\\0%y\\0%m\\0%U\\0%G\\0%s\\0%T@\\0%A@\\0%i\\0%l\\0'], { cwd: dir }).stdoutBytes.toString('utf8').split('\0');
  const seen = new Map<string, { ino: string }>();
  for (let i = 0; i + 10 <= out.length; i += 10) {
    const [p0, y, m, u, g, s, mt, at, ino, l] = out.slice(i, i + 10);
    const p = p0 === '' ? '.' : p0;
    seen.set(p, { ino });
    const e = expected.get(p);
    if (!e) {
      if (!p.endsWith('-hard') && !p.endsWith('-too')) problems.push(`${p}: unexpected`);
      continue;
    }
    const want = (what: string, got: string | bigint | number, exp: string | bigint | number) => {
      if (String(got) !== String(exp)) problems.push(`${p}: ${what} is ${got}, expected ${exp}`);
    };
    want('type', y, e.kind);
    want('mode', parseInt(m, 8), e.mode);
    want('uid', Number(u), e.uid);
    want('gid', Number(g), e.gid);
    want('mtime', nsFromFind(mt), t(e.mtime));
    want('atime', nsFromFind(at), t(e.atime));
    if (e.size !== undefined) want('size', Number(s), e.size);
    if (e.linkTarget !== undefined) want('symlink target', l, e.linkTarget);
    if (e.dev) {
      const st = runOk('stat', ['-c', '%t %T', '--', p], { cwd: dir }).stdout.trim().split(' ').map((h) => parseInt(h, 16));
      want('device', st.join(','), e.dev.join(','));
    }
    if (e.sha256 !== undefined) {
      const h = createHash('sha256');
      const fd = fs.openSync(path.join(dir, p), 'r');
      const buf = Buffer.allocUnsafe(1024 * 1024);
      for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
      fs.closeSync(fd);
      want('content sha256', h.digest('hex'), e.sha256);
    }
  }
  for (const p of expected.keys()) if (!seen.has(p)) problems.push(`${p}: missing`);
  for (const [p, e] of expected) {
    if (e.sameInodeAs && seen.get(p)?.ino !== seen.get(e.sameInodeAs)?.ino) problems.push(`${p}: not a hard link of ${e.sameInodeAs}`);
  }
  // xattrs, as the kernel reports them
  const fattr = runOk('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: dir }).stdout;
  const got = new Map<string, Record<string, string>>();
  let cur = '';
  for (const line of fattr.split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = unescapeGetfattr(line.slice(8));
      cur = cur === '.' ? '.' : cur.replace(/^\.\//, '');
      got.set(cur, {});
    } else if (line.includes('=0x')) {
      const k = line.indexOf('=');
      got.get(cur)![line.slice(0, k)] = line.slice(k + 3);
    }
  }
  for (const [p, e] of expected) {
    const g = got.get(p) ?? {};
    const a = JSON.stringify(Object.entries(g).sort());
    const b = JSON.stringify(Object.entries(e.xattrs).sort());
    if (a !== b) problems.push(`${p}: xattrs ${a}, expected ${b}`);
  }
  return problems;
}
