/**
 * Run by test/ext4.test.ts as an unprivileged user (setpriv): writes the full layer tree
 * into the balenaOS image named by TRANSPLANT_USER_WRITE_IMAGE through openDiskTarget
 * and commits. Does nothing when that variable is unset (node --test also loads it).
 */
import { openDiskTarget } from '../../src/disk/disk-target.js';
import { fullTree, writeTree } from './layer-tree.js';

const image = process.env.TRANSPLANT_USER_WRITE_IMAGE;
if (image) {
  (async () => {
    const target = await openDiskTarget(image);
    try {
      const tree = await fullTree(Number(process.env.TRANSPLANT_USER_WRITE_FILES ?? '200'));
      await target.ensureRoom(tree.bytes, tree.inodes);
      await writeTree(target.writer, 'docker/overlay2/user/diff', tree);
      await target.commit();
      process.stdout.write(JSON.stringify({ uid: process.getuid?.(), ok: true }) + '\n');
    } catch (err) {
      await target.abort();
      throw err;
    }
  })().catch((err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
