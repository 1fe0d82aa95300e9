/** `transplant ls <balena.img>`: the images already in the image's resin-data, read without changing it. */
import { EngineRootSource } from '../sources/engine-root.js';
import { listImages, type ImageListing } from '../sources/listing.js';
import { DiskImageReader } from './read-only.js';

export async function listDiskImage(imagePath: string): Promise<ImageListing[]> {
  const reader = await DiskImageReader.open(imagePath);
  try {
    const source = await EngineRootSource.over(reader, reader.description);
    return await listImages(source);
  } finally {
    await reader.close();
  }
}
