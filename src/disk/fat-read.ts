import { ImageFile } from '../ext4/image-file.js';
import { FatVolume } from '../fat/volume.js';
import type { Partition } from './partition-table.js';

/** Reads one file from the FAT file system of a partition of an image, without mounting; undefined when absent. */
export function readFatFile(imagePath: string, part: Pick<Partition, 'offset' | 'size'>, where: string, filePath: string): Buffer | undefined {
  const image = ImageFile.open(imagePath, false);
  try {
    return FatVolume.open(image, part.offset, part.size, where).readFile(filePath, 1024 * 1024);
  } finally {
    image.close();
  }
}
