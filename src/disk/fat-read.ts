import { withOpenFile, FileDisk } from 'file-disk';
import { interact } from 'balena-image-fs';

/** Reads one file from a FAT partition (1-based Linux partition number) of an image, without mounting; undefined when absent. */
export async function readFatFile(imagePath: string, partitionIndex: number, filePath: string): Promise<Buffer | undefined> {
  return withOpenFile(imagePath, 'r', async (handle) => {
    const disk = new FileDisk(handle, true, false, false);
    return interact(disk, partitionIndex, async (fatFs) => {
      try {
        return await fatFs.promises.readFile(filePath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw err;
      }
    });
  });
}
