/**
 * NetworkManager keyfiles for `resin-boot`'s `system-connections/` (balenaOS copies them
 * into NetworkManager's system-connections at boot, skipping names ending in `.ignore`).
 *
 * The keyfile format is GLib's key file (glib/gkeyfile.c): `[group]` lines, `key=value`
 * lines, `#` comments and blank lines; anything else makes the whole file unreadable.
 * Settings and their rules come from NetworkManager (libnm-core-impl/nm-setting-*.c,
 * nm-keyfile.c): `connection.id` and `connection.type` are required; in the keyfile the
 * type may be written as its alias (`ethernet`, `wifi`); `ipvN.addressN` is
 * `address/prefix[,gateway]`; `method=manual` needs at least one address.
 */
import { isIPv4, isIPv6 } from 'node:net';

export interface StaticAddress {
  family: 4 | 6;
  address: string;
  prefix: number;
  gateway?: string;
}

export interface StaticIpOptions {
  /** One or two `--static-ip` values (at most one per address family). */
  specs: string | readonly string[];
  /** `--interface`, default `eth0`. */
  interfaceName?: string;
  /** DNS servers (either family). */
  dns?: readonly string[];
  /** Connection id; default `static-<interface>`. */
  id?: string;
}

export interface Keyfile {
  /** `connection.id`. */
  id: string;
  /** The file name in `system-connections/`, derived from the id. */
  fileName: string;
  content: string;
}

function v4ToInt(a: string): number {
  return a.split('.').reduce((n, p) => n * 256 + Number(p), 0);
}

function v6ToBigInt(a: string): bigint {
  let s = a;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const n = v4ToInt(v4[1]);
    s = s.slice(0, -v4[1].length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((n, g) => (n << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function inSubnet(family: 4 | 6, a: string, b: string, prefix: number): boolean {
  if (family === 4) {
    if (prefix === 0) return true;
    const mask = (0xffffffff << (32 - prefix)) >>> 0;
    return ((v4ToInt(a) & mask) >>> 0) === ((v4ToInt(b) & mask) >>> 0);
  }
  const shift = BigInt(128 - prefix);
  return v6ToBigInt(a) >> shift === v6ToBigInt(b) >> shift;
}

function checkAddress(family: 4 | 6, address: string, prefix: number, what: string): void {
  if (family === 4) {
    const n = v4ToInt(address);
    const first = n >>> 24;
    if (n === 0 || first === 0) throw new Error(`${what}: ${address} is not a usable host address`);
    if (first === 127) throw new Error(`${what}: ${address} is a loopback address`);
    if (first >= 224) throw new Error(`${what}: ${address} is a multicast or reserved address, not a host address`);
    if (prefix <= 30) {
      const hostMask = (2 ** (32 - prefix) - 1) >>> 0;
      if ((n & hostMask) === 0) throw new Error(`${what}: ${address}/${prefix} is the network address of its subnet; give a host address`);
      if ((n & hostMask) >>> 0 === hostMask) throw new Error(`${what}: ${address}/${prefix} is the broadcast address of its subnet; give a host address`);
    }
  } else {
    const n = v6ToBigInt(address);
    if (n === 0n || n === 1n) throw new Error(`${what}: ${address} is not a usable host address`);
    if (n >> 120n === 0xffn) throw new Error(`${what}: ${address} is a multicast address, not a host address`);
  }
}

/**
 * Parses `<address>/<prefix>[,<gateway>]` (IPv4 or IPv6). Throws one clear line when it
 * is not a usable host address, the prefix is out of range or the gateway is not reachable.
 */
export function parseStaticIp(spec: string): StaticAddress {
  const what = `--static-ip ${spec}`;
  const m = /^([^/,\s]+)\/(\d{1,3})(?:,([^,\s]+))?$/.exec(spec.trim());
  if (!m) throw new Error(`${what}: expected <address>/<prefix>[,<gateway>], e.g. 192.168.1.50/24,192.168.1.1`);
  const [, address, prefixText, gateway] = m;
  const family = isIPv4(address) ? 4 : isIPv6(address) ? 6 : undefined;
  if (family === undefined) throw new Error(`${what}: ${address} is not an IPv4 or IPv6 address`);
  if (address.includes('%')) throw new Error(`${what}: a zone index (%) is not allowed in a static address`);
  const prefix = Number(prefixText);
  const max = family === 4 ? 32 : 128;
  if (prefix < 1 || prefix > max) throw new Error(`${what}: prefix /${prefix} is out of range (1-${max} for IPv${family})`);
  checkAddress(family, address, prefix, what);
  if (gateway !== undefined) {
    const gFamily = isIPv4(gateway) ? 4 : isIPv6(gateway) ? 6 : undefined;
    if (gFamily === undefined) throw new Error(`${what}: gateway ${gateway} is not an IPv4 or IPv6 address`);
    if (gFamily !== family) throw new Error(`${what}: gateway ${gateway} is not IPv${family} like the address`);
    if (gateway === address) throw new Error(`${what}: the gateway is the address itself`);
    if (gFamily === 4 ? v4ToInt(gateway) === 0 : v6ToBigInt(gateway) === 0n) throw new Error(`${what}: gateway ${gateway} is not a usable address`);
    const linkLocal6 = family === 6 && v6ToBigInt(gateway) >> 118n === 0x3fan;
    if (prefix < max && !linkLocal6 && !inSubnet(family, address, gateway, prefix)) {
      throw new Error(`${what}: gateway ${gateway} is outside ${address}/${prefix}; check the prefix or the gateway`);
    }
  }
  return { family, address, prefix, gateway };
}

/** Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not '.' or '..' (net/core/dev.c dev_valid_name). */
export function checkInterfaceName(name: string, what = '--interface'): string {
  if (name.length === 0 || Buffer.byteLength(name) > 15 || name === '.' || name === '..' || /[\s/:]/.test(name)) {
    throw new Error(`${what} ${JSON.stringify(name)} is not a valid interface name (1-15 characters, no '/', ':' or spaces)`);
  }
  return name;
}

/** GLib key file value escaping (g_key_file_parse_string_as_value's inverse). */
function escapeValue(v: string): string {
  return v
    .replace(/\\/g, '\\\\')
    .replace(/\n/g, '\\n')
    .replace(/\t/g, '\\t')
    .replace(/\r/g, '\\r')
    .replace(/^ /, '\\s');
}

/**
 * The file name for a connection id: characters outside [A-Za-z0-9._-] become '_', no
 * leading '.', and never a suffix NetworkManager or balenaOS skip (`.ignore`, `~`,
 * `.bak`, `.orig`, `.rej`, `.swp`, `.tmp`, `.nmmeta`: nm-keyfile-utils.c
 * nm_keyfile_utils_ignore_filename).
 */
export function keyfileName(id: string): string {
  let name = id.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  if (/(\.ignore|\.bak|\.orig|\.rej|\.swp|\.tmp|\.nmmeta|\.dpkg-[a-z]+|\.rpm[a-z]+)$/i.test(name)) name += '_';
  if (name === '' || name === '_') name = 'connection';
  return name.slice(0, 200);
}

/** The keyfile for `--static-ip … [--interface eth0]`: an ethernet connection bound to the interface. */
export function staticIpKeyfile(options: StaticIpOptions): Keyfile {
  const specs = typeof options.specs === 'string' ? [options.specs] : [...options.specs];
  if (specs.length === 0) throw new Error('--static-ip: no address given');
  const iface = checkInterfaceName(options.interfaceName ?? 'eth0');
  const byFamily = new Map<4 | 6, StaticAddress>();
  for (const spec of specs) {
    const a = parseStaticIp(spec);
    if (byFamily.has(a.family)) throw new Error(`--static-ip: two IPv${a.family} addresses given; give one per address family`);
    byFamily.set(a.family, a);
  }
  const dns4: string[] = [];
  const dns6: string[] = [];
  for (const d of options.dns ?? []) {
    if (isIPv4(d)) dns4.push(d);
    else if (isIPv6(d)) dns6.push(d);
    else throw new Error(`--dns ${d}: not an IPv4 or IPv6 address`);
  }
  const id = options.id ?? `static-${iface}`;
  if (id.trim() === '' || /[\n\r]/.test(id)) throw new Error(`connection id ${JSON.stringify(id)} must be non-empty and on one line`);
  const lines = ['[connection]', `id=${escapeValue(id)}`, 'type=ethernet', `interface-name=${iface}`, 'autoconnect=true', '', '[ethernet]', ''];
  for (const family of [4, 6] as const) {
    const a = byFamily.get(family);
    const dns = family === 4 ? dns4 : dns6;
    lines.push(`[ipv${family}]`);
    if (a) {
      lines.push(`address1=${a.address}/${a.prefix}${a.gateway ? `,${a.gateway}` : ''}`);
      if (dns.length > 0) lines.push(`dns=${dns.join(';')};`);
      lines.push('method=manual');
    } else {
      if (dns.length > 0) lines.push(`dns=${dns.join(';')};`);
      lines.push('method=auto');
    }
    lines.push('');
  }
  return { id, fileName: keyfileName(id), content: lines.join('\n') };
}

// ---------------------------------------------------------------------------------------
// Checking a user's keyfile (`--network-file`).

export type KeyfileGroups = Map<string, Map<string, string>>;

/** Parses a GLib key file; throws with the line number on anything GLib would refuse. */
export function parseKeyfile(text: string, source: string): KeyfileGroups {
  if (text.includes('\0')) throw new Error(`${source}: is not a text file (NUL byte)`);
  const groups: KeyfileGroups = new Map();
  let current: Map<string, string> | undefined;
  let currentName = '';
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.replace(/^\s+/, '');
    const where = `${source}:${i + 1}`;
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('[')) {
      const m = /^\[([^\][]+)\]\s*$/.exec(line);
      if (!m) throw new Error(`${where}: malformed group line ${JSON.stringify(raw)}`);
      currentName = m[1];
      current = groups.get(currentName) ?? new Map();
      groups.set(currentName, current);
      return;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`${where}: ${JSON.stringify(raw)} is neither a [group], a key=value pair nor a # comment`);
    if (!current) throw new Error(`${where}: key=value before the first [group]`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (!/^[A-Za-z0-9_.-]+(\[[^\]]+\])?$/.test(key)) throw new Error(`${where}: invalid key name ${JSON.stringify(key)}`);
    if (current.has(key)) throw new Error(`${where}: [${currentName}] ${key} is given twice`);
    current.set(key, value);
  });
  return groups;
}

/** connection.type values NetworkManager 1.42 accepts, keyfile aliases included. */
const CONNECTION_TYPES = new Set([
  'ethernet', '802-3-ethernet', 'wifi', '802-11-wireless', '802-11-olpc-mesh', 'gsm', 'cdma', 'bluetooth',
  'bond', 'bridge', 'vlan', 'wireguard', 'vpn', 'infiniband', 'wimax', 'pppoe', 'adsl', 'team', 'generic',
  'tun', 'ip-tunnel', 'macsec', 'macvlan', 'vxlan', 'dummy', 'wpan', '6lowpan', 'ovs-bridge', 'ovs-port',
  'ovs-interface', 'loopback', 'veth', 'vrf', 'wifi-p2p',
]);
/** Types NetworkManager refuses without connection.interface-name (nm-setting-*.c verify). */
const NEEDS_INTERFACE = new Set(['bond', 'bridge', 'team', 'dummy', 'vrf', 'wireguard', 'ovs-bridge', 'ovs-port']);
const METHODS: Record<'ipv4' | 'ipv6', Set<string>> = {
  ipv4: new Set(['auto', 'link-local', 'manual', 'shared', 'disabled']),
  ipv6: new Set(['auto', 'dhcp', 'link-local', 'manual', 'shared', 'ignore', 'disabled']),
};
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

export interface CheckedKeyfile extends Keyfile {
  type: string;
  interfaceName?: string;
}

/**
 * Checks a user keyfile for `--network-file`: it must parse, hold `[connection]` with
 * `id` and a known `type`, and sane `[ipv4]`/`[ipv6]` sections. Returns the content
 * unchanged and the file name derived from the id. Throws listing every problem.
 */
export function checkKeyfile(text: string, source: string): CheckedKeyfile {
  const groups = parseKeyfile(text, source);
  const problems: string[] = [];
  const connection = groups.get('connection');
  if (!connection) throw new Error(`${source}: has no [connection] group; not a NetworkManager keyfile`);
  const id = connection.get('id') ?? '';
  if (id === '') problems.push('[connection] id is missing or empty');
  const type = connection.get('type') ?? '';
  if (type === '') problems.push('[connection] type is missing');
  else if (!CONNECTION_TYPES.has(type)) problems.push(`[connection] type=${type} is not a NetworkManager connection type (e.g. ethernet, wifi, gsm)`);
  const uuid = connection.get('uuid');
  if (uuid !== undefined && !UUID.test(uuid)) problems.push(`[connection] uuid=${uuid} is not a UUID`);
  const iface = connection.get('interface-name');
  if (iface !== undefined) {
    try {
      checkInterfaceName(iface, '[connection] interface-name');
    } catch (e) {
      problems.push((e as Error).message);
    }
  } else if (NEEDS_INTERFACE.has(type)) {
    problems.push(`[connection] interface-name is required for type=${type}`);
  }
  const autoconnect = connection.get('autoconnect');
  if (autoconnect !== undefined && !/^(true|false|yes|no|1|0)$/i.test(autoconnect)) {
    problems.push(`[connection] autoconnect=${autoconnect} is not a boolean`);
  }
  if (type === 'wifi' || type === '802-11-wireless') {
    const wifi = groups.get('wifi') ?? groups.get('802-11-wireless');
    if (!wifi?.get('ssid')) problems.push('[wifi] ssid is required for a wifi connection');
    const security = groups.get('wifi-security') ?? groups.get('802-11-wireless-security');
    const mgmt = security?.get('key-mgmt');
    if (mgmt === 'wpa-psk' && !security?.get('psk') && security?.get('psk-flags') === undefined) {
      problems.push('[wifi-security] key-mgmt=wpa-psk needs psk (the passphrase)');
    }
    const psk = security?.get('psk');
    if (psk !== undefined && mgmt === 'wpa-psk' && !(/^[0-9a-fA-F]{64}$/.test(psk) || (psk.length >= 8 && psk.length <= 63))) {
      problems.push('[wifi-security] psk must be 8-63 characters (or 64 hex digits)');
    }
  }
  if (type === 'vpn' && !groups.get('vpn')?.get('service-type')) problems.push('[vpn] service-type is required for a vpn connection');
  if (type === 'bluetooth' && !groups.get('bluetooth')?.get('type')) problems.push('[bluetooth] type is required for a bluetooth connection');
  for (const family of ['ipv4', 'ipv6'] as const) {
    const g = groups.get(family);
    if (!g) continue;
    const fam = family === 'ipv4' ? 4 : 6;
    const method = g.get('method');
    if (method !== undefined && !METHODS[family].has(method)) {
      problems.push(`[${family}] method=${method} is not one of ${[...METHODS[family]].join(', ')}`);
    }
    let addresses = 0;
    for (const [key, value] of g) {
      if (!/^(address|addresses)\d*$/.test(key)) continue;
      for (const item of value.split(';').filter((s) => s.trim() !== '')) {
        addresses++;
        const m = /^([^/,]+)(?:\/(\d{1,3}))?(?:,([^,]+))?$/.exec(item.trim());
        const ok = m && (fam === 4 ? isIPv4(m[1]) : isIPv6(m[1])) && (m[2] === undefined || Number(m[2]) <= (fam === 4 ? 32 : 128));
        const gwOk = !m?.[3] || (fam === 4 ? isIPv4(m[3]) : isIPv6(m[3]));
        if (!ok || !gwOk) problems.push(`[${family}] ${key}=${item} is not an IPv${fam} address/prefix[,gateway]`);
      }
    }
    const gateway = g.get('gateway');
    if (gateway !== undefined && !(fam === 4 ? isIPv4(gateway) : isIPv6(gateway))) {
      problems.push(`[${family}] gateway=${gateway} is not an IPv${fam} address`);
    }
    const dns = g.get('dns');
    if (dns !== undefined) {
      for (const d of dns.split(/[;,]/).filter((s) => s.trim() !== '')) {
        if (!(fam === 4 ? isIPv4(d.trim()) : isIPv6(d.trim()))) problems.push(`[${family}] dns entry ${d} is not an IPv${fam} address`);
      }
    }
    if (method === 'manual' && addresses === 0) problems.push(`[${family}] method=manual needs at least one address (address1=<address>/<prefix>)`);
    if (method !== 'manual' && method !== undefined && addresses > 0 && (method === 'disabled' || method === 'ignore' || method === 'link-local')) {
      problems.push(`[${family}] addresses are not allowed with method=${method}`);
    }
  }
  if (problems.length > 0) {
    throw new Error(
      `${source}: is not a usable NetworkManager keyfile (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n` +
        problems.map((p) => `  ${p}`).join('\n'),
    );
  }
  return { id, fileName: keyfileName(id), content: text, type, interfaceName: iface };
}
