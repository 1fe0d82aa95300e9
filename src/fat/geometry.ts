/**
 * Where a FAT file system keeps things, from its boot sector, validated before anything is
 * read on its word (Microsoft "FAT: General Overview of On-Disk Format" (fatgen103), BPB;
 * dosfstools boot.c read_boot does the same checks). Offsets: BytsPerSec @11 u16,
 * SecPerClus @13 u8, RsvdSecCnt @14 u16, NumFATs @16 u8, RootEntCnt @17 u16, TotSec16 @19
 * u16, FATSz16 @22 u16, TotSec32 @32 u32; FAT32 only: FATSz32 @36 u32, ExtFlags @40 u16,
 * RootClus @44 u32, FSInfo @48 u16.
 */
export interface FatGeometry {
  /** 12, 16 or 32, decided by the cluster count alone as the specification says. */
  bits: 12 | 16 | 32;
  bytesPerSector: number;
  clusterBytes: number;
  /** Byte offsets relative to the start of the partition. */
  fatOffset: number;
  fatBytes: number;
  numFats: number;
  /** FATs written on a change: all when mirrored, else only the active one (FAT32 ExtFlags). */
  writtenFats: number[];
  /** FAT12/16: the fixed root directory region; FAT32: the root's first cluster. */
  rootOffset: number;
  rootEntries: number;
  rootCluster: number;
  /** FAT32 FSInfo sector offset, 0 when none. */
  fsInfoOffset: number;
  dataOffset: number;
  /** Data clusters, numbered 2 .. clusterCount+1. */
  clusterCount: number;
  /** End-of-chain and bad-cluster values for this FAT width. */
  eoc: number;
  bad: number;
}

/** Reads the BPB of the boot sector `bs` of a partition of `partitionBytes`; throws one line naming `where`. */
export function parseGeometry(bs: Buffer, partitionBytes: number, where: string): FatGeometry {
  const bad = (why: string) => new Error(`${where}: the FAT boot sector is not valid (${why}); nothing was changed`);
  if (bs.length < 512 || bs.readUInt16LE(510) !== 0xaa55) throw bad('no boot signature');
  const bytesPerSector = bs.readUInt16LE(11);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) throw bad(`${bytesPerSector} bytes per sector`);
  const sectorsPerCluster = bs[13];
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) throw bad(`${sectorsPerCluster} sectors per cluster`);
  const clusterBytes = sectorsPerCluster * bytesPerSector;
  if (clusterBytes > 64 * 1024) throw bad(`clusters of ${clusterBytes} bytes`);
  const reserved = bs.readUInt16LE(14);
  if (reserved === 0) throw bad('no reserved sectors');
  const numFats = bs[16];
  if (numFats < 1 || numFats > 4) throw bad(`${numFats} FATs`);
  const rootEntries = bs.readUInt16LE(17);
  const total16 = bs.readUInt16LE(19);
  const totalSectors = total16 !== 0 ? total16 : bs.readUInt32LE(32);
  const fatSz16 = bs.readUInt16LE(22);
  const fatSectors = fatSz16 !== 0 ? fatSz16 : bs.readUInt32LE(36);
  if (totalSectors === 0 || totalSectors * bytesPerSector > partitionBytes) {
    throw bad(`${totalSectors} sectors of ${bytesPerSector} bytes do not fit in the partition of ${partitionBytes} bytes`);
  }
  if (fatSectors === 0) throw bad('a FAT of 0 sectors');
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstDataSector = reserved + numFats * fatSectors + rootDirSectors;
  if (firstDataSector >= totalSectors) throw bad('the FATs and root directory leave no room for data');
  const clusterCount = Math.floor((totalSectors - firstDataSector) / sectorsPerCluster);
  if (clusterCount < 1) throw bad('no data clusters');
  const bits: 12 | 16 | 32 = clusterCount < 4085 ? 12 : clusterCount < 65525 ? 16 : 32;
  if ((bits === 32) !== (fatSz16 === 0)) throw bad(`${clusterCount} clusters make it FAT${bits}, but its BPB is laid out for ${fatSz16 === 0 ? 'FAT32' : 'FAT12/16'}`);
  if (bits === 32 && rootEntries !== 0) throw bad('a FAT32 with a fixed root directory');
  if (bits !== 32 && rootEntries === 0) throw bad('no root directory entries');
  if ((rootEntries * 32) % bytesPerSector !== 0) throw bad(`${rootEntries} root directory entries do not fill whole sectors`);
  const fatBytes = fatSectors * bytesPerSector;
  if (fatBytes < Math.ceil(((clusterCount + 2) * bits) / 8)) throw bad(`a FAT of ${fatBytes} bytes is too small for ${clusterCount} clusters`);
  let rootCluster = 0;
  let fsInfoOffset = 0;
  let writtenFats = Array.from({ length: numFats }, (_, i) => i);
  if (bits === 32) {
    rootCluster = bs.readUInt32LE(44);
    if (rootCluster < 2 || rootCluster >= clusterCount + 2) throw bad(`root cluster ${rootCluster} outside the ${clusterCount} clusters`);
    const fsInfo = bs.readUInt16LE(48);
    if (fsInfo !== 0 && fsInfo !== 0xffff && fsInfo < reserved) fsInfoOffset = fsInfo * bytesPerSector;
    const extFlags = bs.readUInt16LE(40);
    if ((extFlags & 0x80) !== 0) {
      const active = extFlags & 0x0f;
      if (active >= numFats) throw bad(`active FAT ${active} of ${numFats}`);
      writtenFats = [active];
    }
  }
  return {
    bits,
    bytesPerSector,
    clusterBytes,
    fatOffset: reserved * bytesPerSector,
    fatBytes,
    numFats,
    writtenFats,
    rootOffset: (reserved + numFats * fatSectors) * bytesPerSector,
    rootEntries,
    rootCluster,
    fsInfoOffset,
    dataOffset: firstDataSector * bytesPerSector,
    clusterCount,
    eoc: bits === 12 ? 0xff8 : bits === 16 ? 0xfff8 : 0x0ffffff8,
    bad: bits === 12 ? 0xff7 : bits === 16 ? 0xfff7 : 0x0ffffff7,
  };
}
