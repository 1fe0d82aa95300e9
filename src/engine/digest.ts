/** Content addresses as the engine computes them (layer/layer.go, image/image.go). */
import { createHash, randomBytes } from 'node:crypto';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function isDigest(value: string): boolean {
  return DIGEST.test(value);
}

export function assertDigest(value: string, what: string): string {
  if (!isDigest(value)) throw new Error(`${what} is not a sha256 digest: ${JSON.stringify(value.slice(0, 80))}`);
  return value;
}

export function hexOf(digest: string): string {
  return assertDigest(digest, 'digest').slice(7);
}

export function sha256Digest(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/**
 * ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))
 * (layer/layer.go CreateChainID: parent first, one space, both with "sha256:").
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    assertDigest(diffId, 'DiffID');
    out.push(out.length === 0 ? diffId : sha256Digest(`${out[out.length - 1]} ${diffId}`));
  }
  return out;
}

/** A fresh cache ID: 64 random hex digits, as the layer store makes them (layer/layer_store.go). */
export function newCacheId(): string {
  return randomBytes(32).toString('hex');
}

/**
 * A fresh overlay2 link ID: 26 characters of base32 (A–Z, 2–7) from 128 random bits
 * (daemon/graphdriver/overlayutils GenerateID).
 */
export function newLinkId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const bytes = randomBytes(17);
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = 0; i < 26; i++) out += alphabet[Number((bits >> BigInt(i * 5)) & 31n)];
  return out;
}

export const LINK_ID = /^[A-Z2-7]{26}$/;
export const CACHE_ID = /^[0-9a-f]{64}$/;
