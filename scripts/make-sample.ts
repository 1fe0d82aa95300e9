/**
 * Generates the sample data shipped in sample/ (run by a developer, not by users):
 *  - device-docker.tar.gz: a device's /var/lib/docker as `tar -czf` would give it, holding two
 *    small images that share a base layer, with a whiteout, an opaque directory, a symlink,
 *    an xattr and nanosecond times. Made without root and without Docker: the layers are
 *    packed here, loaded through the docker-save source, and injected into a tar stream.
 *  - dashboard-state.json: the device state as copied from the dashboard.
 *  - balena-sample.img.gz: a small balenaOS-like disk image (MBR, resin-boot … resin-data),
 *    built with sfdisk, mkfs.vfat, mtools and mkfs.ext4.
 * The images hold only text files (no third-party binaries): they demonstrate the transfer.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createGzip } from 'node:zlib';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { execFileSync } from 'node:child_process';
import { emptyHeader, type TarHeader } from '../src/tar/header.js';
import { TarPacker } from '../src/tar/pack.js';
import { sha256Digest } from '../src/engine/digest.js';
import { DockerArchiveSource } from '../src/sources/docker-archive.js';
import { injectImages } from '../src/inject/inject.js';
import { TarTreeWriter } from '../src/targets/tar-tree.js';
import { buildBalenaImage } from '../test/harness/balena-image.js';

const T0 = 1764000000_123456789n; // a fixed time with nanoseconds

async function pack(entries: { header: Partial<TarHeader> & { name: string }; data?: string }[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
  const tar = new TarPacker(sink);
  for (const e of entries) {
    const data = e.data !== undefined ? Buffer.from(e.data) : undefined;
    await tar.add({ ...emptyHeader(), mtime: T0, mode: 0o644, ...e.header, size: data?.length ?? 0 }, data);
  }
  await tar.finish();
  return Buffer.concat(chunks);
}

async function main(): Promise<void> {
  const out = path.resolve(process.argv[2] ?? 'sample');
  fs.mkdirSync(out, { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'transplant-sample-'));
  try {
    const dir = { type: 'directory' as const, mode: 0o755 };
    const base = await pack([
      { header: { name: 'app/', ...dir } },
      { header: { name: 'app/data/', ...dir } },
      { header: { name: 'app/data/seed.txt' }, data: 'replaced in v2\n' },
      { header: { name: 'app/hello.sh', mode: 0o755 }, data: '#!/bin/sh\necho "Hello from a transplanted app"\n' },
      { header: { name: 'app/latest', type: 'symlink', mode: 0o777, linkname: 'hello.sh' } },
      { header: { name: 'app/old.txt' }, data: 'deleted in v2\n' },
      { header: { name: 'etc/', ...dir } },
      { header: { name: 'etc/motd', xattrs: [{ name: 'user.origin', value: Buffer.from('transplant-sample') }] }, data: 'preloaded by transplant\n' },
    ]);
    const v2 = await pack([
      { header: { name: 'app/', ...dir, mtime: T0 + 1000n } },
      { header: { name: 'app/.wh.old.txt', mode: 0o600 } },
      { header: { name: 'app/data/', ...dir, mtime: T0 + 1000n } },
      { header: { name: 'app/data/.wh..wh..opq', mode: 0o600 } },
      { header: { name: 'app/data/new.txt', mtime: T0 + 1000n }, data: 'v2 data\n' },
      { header: { name: 'app/VERSION' }, data: '2.0\n' },
    ]);
    const config = (diffIds: string[], cmd: string[]): Buffer =>
      Buffer.from(
        JSON.stringify({
          architecture: 'arm64',
          variant: 'v8',
          os: 'linux',
          created: '2026-11-01T00:00:00Z',
          config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: cmd, WorkingDir: '/app' },
          rootfs: { type: 'layers', diff_ids: diffIds },
          history: diffIds.map(() => ({ created: '2026-11-01T00:00:00Z', created_by: 'transplant sample' })),
        }),
      );
    const baseConfig = config([sha256Digest(base)], ['/app/hello.sh']);
    const appConfig = config([sha256Digest(base), sha256Digest(v2)], ['/app/hello.sh']);
    const archive = await pack([
      { header: { name: 'base/layer.tar' }, data: base.toString('latin1') },
      { header: { name: 'v2/layer.tar' }, data: v2.toString('latin1') },
      { header: { name: `${sha256Digest(baseConfig).slice(7)}.json` }, data: baseConfig.toString('latin1') },
      { header: { name: `${sha256Digest(appConfig).slice(7)}.json` }, data: appConfig.toString('latin1') },
      {
        header: { name: 'manifest.json' },
        data: JSON.stringify([
          { Config: `${sha256Digest(baseConfig).slice(7)}.json`, RepoTags: ['sample/base:1.0'], Layers: ['base/layer.tar'] },
          { Config: `${sha256Digest(appConfig).slice(7)}.json`, RepoTags: ['sample/hello:2.0', 'sample/hello:latest'], Layers: ['base/layer.tar', 'v2/layer.tar'] },
        ]),
      },
    ]);
    const archivePath = path.join(work, 'images.tar');
    fs.writeFileSync(archivePath, archive.toString('latin1') === '' ? archive : archive);

    // The device's engine root, as a gzipped tarball with the var/lib/docker/ prefix.
    const source = await DockerArchiveSource.open(archivePath);
    const gz = createGzip({ level: 9 });
    const file = fs.createWriteStream(path.join(out, 'device-docker.tar.gz'));
    gz.pipe(file);
    const writer = new TarTreeWriter(gz, 'var/lib/docker', 'device-docker.tar.gz');
    await injectImages(source, await source.images(), writer, '');
    await writer.close();
    gz.end();
    await once(file, 'finish');
    await source.close();

    fs.writeFileSync(
      path.join(out, 'dashboard-state.json'),
      JSON.stringify(
        {
          local: {
            name: 'sample-device',
            config: { RESIN_SUPERVISOR_POLL_INTERVAL: '900000', HOST_CONFIG_gpu_mem: '16' },
            apps: {
              '8a3a8a2cf1b44d36a0c9e1a1f2f2b9f0': {
                id: 1234567,
                name: 'sample-fleet',
                class: 'fleet',
                releases: {
                  '4f1c1e2a9d5b4c7e8f0a1b2c3d4e5f60': {
                    id: 2345678,
                    services: {
                      hello: {
                        id: 345678,
                        image_id: 4567890,
                        image: 'sample/hello:2.0',
                        environment: { GREETING: 'hello' },
                        labels: { 'io.balena.features.supervisor-api': '0' },
                        running: true,
                        composition: { restart: 'always' },
                      },
                    },
                    volumes: {},
                    networks: {},
                  },
                },
              },
            },
          },
          dependent: { apps: {} },
        },
        null,
        2,
      ) + '\n',
    );

    const img = buildBalenaImage(work, 'balena-sample.img', { table: 'mbr', dataMiB: 16, deviceType: { slug: 'raspberrypi4-64', arch: 'aarch64' } });
    execFileSync('sh', ['-c', `gzip -9 -n -c "${img.path}" > "${path.join(out, 'balena-sample.img.gz')}"`]);
    process.stdout.write(`sample written to ${out}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`error: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
