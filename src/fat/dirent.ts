/**
 * FAT directory entries (fatgen103 "FAT Directory Structure" and "FAT Long Directory
 * Entries"; the kernel's fs/fat/dir.c and namei_vfat.c read and make them the same way):
 * 32-byte short entries (8.3 name, attributes, first cluster, size) preceded by VFAT
 * long-name entries holding the name in UTF-16, 13 characters each, last part first,
 * each carrying the checksum of the short name it belongs to.
 */
export const ENTRY = 32;
export const ATTR_READ_ONLY = 0x01;
export const ATTR_VOLUME_ID = 0x08;
export const ATTR_DIRECTORY = 0x10;
export const ATTR_ARCHIVE = 0x20;
export const ATTR_LONG_NAME = 0x0f;
const LAST_LONG_ENTRY = 0x40;
/** Byte offsets of the 13 UTF-16 characters inside a long-name entry. */
const LFN_CHAR_AT = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

export interface DirEntry {
  /** The long name when a valid one precedes the short entry, else the short name. */
  name: string;
  /** The 11 bytes of the short name as stored. */
  shortName: Buffer;
  attr: number;
  firstCluster: number;
  size: number;
  /** Index of the short entry in its directory. */
  index: number;
  /** Index of the first long-name entry (== index when none). */
  firstIndex: number;
}

/** The checksum of an 11-byte short name that every long-name entry of it carries (fatgen103). */
export function shortNameChecksum(name: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + name[i]) & 0xff;
  return sum;
}

/** "NAME.EXT" of an 11-byte short name, lower-cased where the NT case bits (byte 12) say so. */
export function displayShortName(raw: Buffer, ntCase = 0): string {
  const n = Buffer.from(raw);
  if (n[0] === 0x05) n[0] = 0xe5;
  let base = n.toString('latin1', 0, 8).replace(/ +$/, '');
  let ext = n.toString('latin1', 8, 11).replace(/ +$/, '');
  if (ntCase & 0x08) base = base.toLowerCase();
  if (ntCase & 0x10) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

/**
 * Parses the entries of one directory (its bytes, cluster after cluster). Stops at the
 * first free-and-last entry (name[0] == 0). Long names whose sequence or checksum do not
 * fit their short entry are ignored, as the kernel ignores them.
 */
export function parseDirectory(dir: Buffer): DirEntry[] {
  const out: DirEntry[] = [];
  let lfn: { parts: string[]; checksum: number; expect: number; first: number } | undefined;
  for (let i = 0; i * ENTRY < dir.length; i++) {
    const e = dir.subarray(i * ENTRY, (i + 1) * ENTRY);
    if (e[0] === 0x00) break;
    if (e[0] === 0xe5) {
      lfn = undefined;
      continue;
    }
    const attr = e[11];
    if ((attr & 0x3f) === ATTR_LONG_NAME) {
      const ord = e[0];
      const seq = ord & 0x1f;
      if (ord & LAST_LONG_ENTRY) {
        lfn = seq >= 1 && seq <= 20 ? { parts: new Array<string>(seq), checksum: e[13], expect: seq, first: i } : undefined;
      } else if (!lfn || seq !== lfn.expect || e[13] !== lfn.checksum) {
        lfn = undefined;
        continue;
      }
      if (!lfn) continue;
      let chars = '';
      for (const at of LFN_CHAR_AT) {
        const c = e.readUInt16LE(at);
        if (c === 0x0000 || c === 0xffff) break;
        chars += String.fromCharCode(c);
      }
      lfn.parts[seq - 1] = chars;
      lfn.expect = seq - 1;
      continue;
    }
    const shortName = Buffer.from(e.subarray(0, 11));
    let name = displayShortName(shortName, e[12]);
    let firstIndex = i;
    if (lfn && lfn.expect === 0 && lfn.checksum === shortNameChecksum(shortName)) {
      name = lfn.parts.join('');
      firstIndex = lfn.first;
    }
    lfn = undefined;
    if (attr & ATTR_VOLUME_ID) continue;
    out.push({
      name,
      shortName,
      attr,
      firstCluster: (e.readUInt16LE(20) << 16) | e.readUInt16LE(26),
      size: e.readUInt32LE(28),
      index: i,
      firstIndex,
    });
  }
  return out;
}

/** Names match as FAT matches them: without regard to case. */
export function sameName(a: string, b: string): boolean {
  return a.toUpperCase() === b.toUpperCase();
}

const SHORT_CHARS = /^[A-Z0-9!#$%&'()\-@^_`{}~]+$/;

/** The 11 stored bytes when `name` is a valid upper-case 8.3 name that needs no long name; else undefined. */
export function exactShortName(name: string): Buffer | undefined {
  const m = /^([^.]{1,8})(?:\.([^.]{1,3}))?$/.exec(name);
  if (!m || !SHORT_CHARS.test(m[1]) || (m[2] !== undefined && !SHORT_CHARS.test(m[2]))) return undefined;
  return Buffer.from(m[1].padEnd(8, ' ') + (m[2] ?? '').padEnd(3, ' '), 'latin1');
}

/**
 * A unique short name for a long name (the "numeric tail" basis of fatgen103, as the
 * kernel's vfat_create_shortname makes it): upper case, characters FAT does not allow
 * replaced by '_', spaces and dots left out, the base cut to leave room for "~N".
 */
export function makeShortName(name: string, taken: (raw: Buffer) => boolean): Buffer {
  const clean = (s: string) => s.toUpperCase().replace(/[ .]/g, '').replace(/[^A-Z0-9!#$%&'()\-@^_`{}~]/g, '_');
  const dot = name.lastIndexOf('.');
  const base = clean(dot > 0 ? name.slice(0, dot) : name) || '_';
  const ext = dot > 0 ? clean(name.slice(dot + 1)).slice(0, 3) : '';
  for (let n = 1; n < 1_000_000; n++) {
    const tail = `~${n}`;
    const raw = Buffer.from(base.slice(0, 8 - tail.length).concat(tail).padEnd(8, ' ') + ext.padEnd(3, ' '), 'latin1');
    if (!taken(raw)) return raw;
  }
  throw new Error(`no free short name for ${name}`);
}

/** DOS date and time (local fields, 2-second resolution) of `when`. */
function dosDateTime(when: Date): { date: number; time: number } {
  const year = Math.min(Math.max(when.getUTCFullYear(), 1980), 2107);
  return {
    date: ((year - 1980) << 9) | ((when.getUTCMonth() + 1) << 5) | when.getUTCDate(),
    time: (when.getUTCHours() << 11) | (when.getUTCMinutes() << 5) | Math.floor(when.getUTCSeconds() / 2),
  };
}

/** A short entry. */
export function shortEntry(shortName: Buffer, attr: number, firstCluster: number, size: number, when: Date): Buffer {
  const e = Buffer.alloc(ENTRY);
  shortName.copy(e, 0, 0, 11);
  e[11] = attr;
  const { date, time } = dosDateTime(when);
  e.writeUInt16LE(time, 14);
  e.writeUInt16LE(date, 16);
  e.writeUInt16LE(date, 18);
  setEntryCluster(e, firstCluster);
  e.writeUInt16LE(time, 22);
  e.writeUInt16LE(date, 24);
  e.writeUInt32LE(size, 28);
  return e;
}

export function setEntryCluster(e: Buffer, cluster: number): void {
  e.writeUInt16LE((cluster >>> 16) & 0xffff, 20);
  e.writeUInt16LE(cluster & 0xffff, 26);
}

/** Marks an entry written now (write date and time, access date). */
export function touchEntry(e: Buffer, when: Date): void {
  const { date, time } = dosDateTime(when);
  e.writeUInt16LE(date, 18);
  e.writeUInt16LE(time, 22);
  e.writeUInt16LE(date, 24);
}

/** The long-name entries for `name` in the order they are stored (last part first). */
export function longNameEntries(name: string, shortName: Buffer): Buffer[] {
  if (name.length > 255 || /[\0-\x1f"*/:<>?\\|]/.test(name)) throw new Error(`${JSON.stringify(name)} is not a valid FAT long name`);
  const units = Array.from({ length: name.length }, (_, i) => name.charCodeAt(i));
  const count = Math.ceil(units.length / 13);
  const checksum = shortNameChecksum(shortName);
  const out: Buffer[] = [];
  for (let seq = count; seq >= 1; seq--) {
    const e = Buffer.alloc(ENTRY);
    e[0] = seq | (seq === count ? LAST_LONG_ENTRY : 0);
    e[11] = ATTR_LONG_NAME;
    e[13] = checksum;
    LFN_CHAR_AT.forEach((at, k) => {
      const pos = (seq - 1) * 13 + k;
      e.writeUInt16LE(pos < units.length ? units[pos] : pos === units.length ? 0x0000 : 0xffff, at);
    });
    out.push(e);
  }
  return out;
}
