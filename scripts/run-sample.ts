/**
 * `npm run sample`: the main job on the sample data shipped in sample/ — a device's
 * /var/lib/docker tarball, its dashboard state, and a balenaOS disk image — as an ordinary
 * user, without Docker and without mounting anything.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';

const root = path.resolve(__dirname, '..', '..');
const sample = path.join(root, 'sample');
const out = path.join(sample, 'out');
const image = path.join(out, 'balena.img');
const bin = path.join(root, 'bin', 'transplant');

function run(args: string[]): void {
  process.stdout.write(`\n$ transplant ${args.map((a) => (a.includes(' ') ? JSON.stringify(a) : a)).join(' ')}\n`);
  execFileSync(process.execPath, [bin, ...args], { stdio: 'inherit', cwd: root });
}

fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(image, gunzipSync(fs.readFileSync(path.join(sample, 'balena-sample.img.gz'))));
process.stdout.write(`fresh sample disk image: ${path.relative(root, image)}\n`);

run(['ls', 'sample/device-docker.tar.gz']);
run(['extract', '--from', 'sample/device-docker.tar.gz', '--apps', 'sample/dashboard-state.json', '--output', 'sample/out/apps.bundle']);
run(['preload', '--from', 'sample/device-docker.tar.gz', '--apps', 'sample/dashboard-state.json', '--disk', 'sample/out/balena.img', '--static-ip', '10.0.0.1/24']);
run(['ls', 'sample/out/balena.img']);
process.stdout.write('\nsample/out/balena.img now boots with sample/hello:2.0 preloaded, its apps.json and a static address for eth0.\n');
