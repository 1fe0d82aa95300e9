#!/usr/bin/env node
// Builds the native helper (native/fsx.c) with node-gyp. Uses the Node headers installed
// beside this node (e.g. Debian's /usr/include/node) when present, so no download is needed;
// otherwise node-gyp fetches them as usual. A failed build is a warning, not an error: the
// disk-image and tarball paths work without it, and whatever needs it says so when used.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const prefix = path.resolve(path.dirname(process.execPath), '..');
const args = ['rebuild', '--silent'];
if (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);

const gyp = process.env.npm_config_node_gyp || require.resolve('node-gyp/bin/node-gyp.js', { paths: [path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm')] });
const r = spawnSync(process.execPath, [gyp, ...args], { stdio: 'inherit', cwd: path.join(__dirname, '..') });
if (r.status !== 0) {
  process.stderr.write(
    'warning: the native helper (xattrs, device nodes, nanosecond times on host directories) could not be built;\n' +
      '         reading and writing engine roots in host directories needs it (install python3, make and g++)\n',
  );
  process.exit(process.env.TRANSPLANT_REQUIRE_NATIVE === '1' ? 1 : 0);
}
