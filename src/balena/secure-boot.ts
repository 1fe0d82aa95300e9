/**
 * Secure boot: a balenaOS image provisioned with secure boot has `"installer":
 * {"secureboot": true}` in the config.json of its boot partition (meta-balena
 * docs/uefi-secure-boot.md, "Provisioning"; the API's device-config endpoint writes it).
 * Its installer enrols balena's keys and encrypts the system partitions, and the device
 * then boots only what balena signed: balena preload (balena-cli src/commands/preload)
 * refuses such images, and so does transplant, before anything is written.
 */
import { BOOT_LABELS, FLASHER_BOOT_LABELS, readBootFile, describeBoot, type BootLocation } from './boot-partition.js';
import { findPartition, readPartitionTable } from '../disk/partition-table.js';
import { ImageFile } from '../ext4/image-file.js';

/** Does this config.json ask the installer for secure boot? */
export function asksForSecureBoot(config: unknown): boolean {
  if (typeof config !== 'object' || config === null) return false;
  const installer = (config as { installer?: unknown }).installer;
  if (typeof installer !== 'object' || installer === null) return false;
  const sb = (installer as { secureboot?: unknown }).secureboot;
  // The API writes a boolean; the installer's shell test also takes the string.
  return sb === true || sb === 'true';
}

function refusal(where: string): Error {
  return new Error(
    `${where} has "installer": {"secureboot": true}: this is a secure-boot image (its installer encrypts the system partitions and the device boots only what balena signed); preloading it is not supported, as balena preload refuses it too (nothing was written)`,
  );
}

/** Refuses a boot location (mounted resin-boot or an image's boot partition) whose config.json enables secure boot. */
export async function refuseSecureBoot(loc: BootLocation): Promise<void> {
  const raw = await readBootFile(loc, 'config.json');
  if (raw === undefined) return;
  let config: unknown;
  try {
    config = JSON.parse(raw.toString('utf8'));
  } catch {
    return; // an unparseable config.json is reported by whoever needs it
  }
  if (asksForSecureBoot(config)) throw refusal(`${describeBoot(loc)}/config.json`);
}

/**
 * Refuses a balenaOS disk image whose boot partition (resin-boot, or flash-boot of a flasher
 * image: the installer reads that one) enables secure boot.
 */
export async function refuseSecureBootImage(imagePath: string): Promise<void> {
  const image = ImageFile.open(imagePath, false);
  let labels: string[] = [];
  try {
    const table = readPartitionTable(image);
    if (!table) return;
    for (const label of [...FLASHER_BOOT_LABELS, ...BOOT_LABELS]) if (findPartition(table, label, imagePath)) labels.push(label);
  } catch {
    labels = [];
  } finally {
    image.close();
  }
  for (const label of labels) await refuseSecureBoot({ kind: 'image', path: imagePath, labels: [label] });
}
