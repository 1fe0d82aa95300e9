/**
 * balenaOS architecture names (device-type.json `arch`) against image config platforms
 * (`architecture` + `variant`), as the balena builder and the supervisor pair them.
 */
const BALENA_TO_OCI: Record<string, { architecture: string; variants?: string[] }[]> = {
  aarch64: [{ architecture: 'arm64' }],
  armv7hf: [{ architecture: 'arm', variants: ['v7', 'v6', ''] }],
  rpi: [{ architecture: 'arm', variants: ['v6', ''] }],
  amd64: [{ architecture: 'amd64' }],
  i386: [{ architecture: '386' }],
  'i386-nlp': [{ architecture: '386' }],
};

export interface ImagePlatform {
  architecture: string;
  variant?: string;
}

export function platformOf(config: Buffer): ImagePlatform {
  const json = JSON.parse(config.toString('utf8')) as { architecture?: string; variant?: string };
  return { architecture: json.architecture ?? 'unknown', variant: json.variant };
}

/** Can a device of this balena arch run an image of this platform? Unknown arch names: undefined. */
export function archMatches(balenaArch: string, image: ImagePlatform): boolean | undefined {
  const allowed = BALENA_TO_OCI[balenaArch];
  if (!allowed) return undefined;
  return allowed.some((a) => a.architecture === image.architecture && (!a.variants || a.variants.includes(image.variant ?? '')));
}
