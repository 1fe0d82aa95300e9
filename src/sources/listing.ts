/** What `transplant ls` shows of any source: images, references, platform, size, layer count. */
import { isSupervisorImage } from '../selection/select.js';
import type { ImageSource } from './source.js';

export interface ImageListing {
  id: string;
  references: string[];
  architecture: string;
  os: string;
  size: number;
  layers: number;
  supervisor: boolean;
}

export async function listImages(source: ImageSource): Promise<ImageListing[]> {
  const out: ImageListing[] = [];
  const sizes = new Map<string, number>();
  for (const img of await source.images()) {
    let size = 0;
    for (const chainId of img.chainIds) {
      if (!sizes.has(chainId)) sizes.set(chainId, (await source.layer(chainId)).size);
      size += sizes.get(chainId) as number;
    }
    out.push({ id: img.id, references: img.references, architecture: img.architecture, os: img.os, size, layers: img.chainIds.length, supervisor: isSupervisorImage(img) });
  }
  return out;
}

