#!/usr/bin/env python3
"""Unusual layer tars for the parity corpus (test/harness/tar-corpus.ts).

tar-corpus.py OUTDIR: writes OUTDIR/<case>.tar for every case made here: Python's tarfile
writers (PAX, GNU, USTAR; pax global headers; names that are not UTF-8) and hand-made
header blocks for the forms other writers produce (several pax headers in a row, a pax
global header between entries, a lone pax header, old GNU headers whose atime/ctime field
holds a prefix as Go < 1.8 wrote them, star headers, v7 headers, signed checksums) and for
broken ones. Which of them the engine loads is not decided here: the test loads each with a
real `docker load`.
"""
import io
import os
import sys
import tarfile

OUT = sys.argv[1]
BLOCK = 512


def octal(value, width):
    return (b'%0*o' % (width - 1, value)) + b'\0'


def block(name, typ=b'0', size=0, mode=0o644, uid=0, gid=0, mtime=1600000000, linkname=b'',
          magic=b'ustar\x0000', uname=b'root', gname=b'root', prefix=b'', gnu_times=None,
          star=None, signed=False, checksum_delta=0):
    """One header block. magic: b'ustar\\x0000' (ustar/pax), b'ustar  \\x00' (old GNU), b'' (v7).
    prefix: the ustar prefix field (345..500), or for old GNU whatever sits in atime/ctime.
    gnu_times: (atime, ctime) octal for old GNU. star: (prefix, atime, ctime) for star."""
    b = bytearray(BLOCK)
    b[0:len(name)] = name
    b[100:108] = octal(mode, 8)
    b[108:116] = octal(uid, 8)
    b[116:124] = octal(gid, 8)
    b[124:136] = octal(size, 12)
    b[136:148] = octal(mtime, 12)
    b[156:157] = typ
    b[157:157 + len(linkname)] = linkname
    if magic:
        b[257:265] = magic
        b[265:265 + len(uname)] = uname
        b[297:297 + len(gname)] = gname
        b[329:337] = octal(0, 8)
        b[337:345] = octal(0, 8)
    if prefix:
        b[345:345 + len(prefix)] = prefix
    if gnu_times:
        b[345:357] = octal(gnu_times[0], 12)
        b[357:369] = octal(gnu_times[1], 12)
    if star:
        b[345:345 + len(star[0])] = star[0]
        b[476:488] = octal(star[1], 12)
        b[488:500] = octal(star[2], 12)
        b[508:512] = b'tar\0'
    b[148:156] = b' ' * 8
    s = sum((c - 256 if c >= 128 else c) for c in b) if signed else sum(b)
    b[148:156] = (b'%06o' % (s + checksum_delta)) + b'\0 '
    return bytes(b)


def pad(data):
    return data + b'\0' * ((BLOCK - len(data) % BLOCK) % BLOCK)


def record(key, value):
    body = b' ' + key + b'=' + value + b'\n'
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(records, typ=b'x', name=b'PaxHeaders/x'):
    data = b''.join(record(k, v) for k, v in records)
    return block(name, typ, len(data)) + pad(data)


def file(name, data=b'', **kw):
    return block(name, b'0', len(data), **kw) + pad(data)


END = b'\0' * 1024


def write(case, data):
    with open(os.path.join(OUT, case + '.tar'), 'wb') as f:
        f.write(data)


# ---- Python's tarfile -------------------------------------------------------------------

def py(case, fmt, entries, pax_headers=None):
    buf = io.BytesIO()
    kw = {'format': fmt, 'encoding': 'utf-8', 'errors': 'surrogateescape'}
    if pax_headers is not None:
        kw['pax_headers'] = pax_headers
    with tarfile.open(fileobj=buf, mode='w', **kw) as t:
        for name, kind, extra in entries:
            i = tarfile.TarInfo(name)
            i.type = kind
            i.mode = extra.get('mode', 0o644)
            i.uid = extra.get('uid', 0)
            i.gid = extra.get('gid', 0)
            i.mtime = extra.get('mtime', 1600000000)
            i.linkname = extra.get('link', '')
            if 'pax' in extra:
                i.pax_headers = extra['pax']
            data = extra.get('data', b'')
            i.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    write(case, buf.getvalue())


NON_UTF8 = os.fsdecode(b'bad-\xff\xfe-name')
LONG = 'long/' + 'd' * 60 + '/' + 'n' * 80 + '.txt'
COMMON = [
    ('dir/', tarfile.DIRTYPE, {'mode': 0o750, 'uid': 1000, 'gid': 1000}),
    ('dir/file', tarfile.REGTYPE, {'data': b'hello\n', 'mode': 0o4755}),
    ('dir/link', tarfile.SYMTYPE, {'link': 'file'}),
    ('dir/hard', tarfile.LNKTYPE, {'link': 'dir/file'}),
    ('dir/.wh.gone', tarfile.REGTYPE, {}),
    (LONG, tarfile.REGTYPE, {'data': b'long name\n'}),
]
py('py-pax', tarfile.PAX_FORMAT, COMMON + [
    ('dir/' + NON_UTF8, tarfile.REGTYPE, {'data': b'not utf-8\n'}),
    ('dir/raw-target', tarfile.SYMTYPE, {'link': NON_UTF8}),
    ('dir/ns', tarfile.REGTYPE, {'pax': {'mtime': '1600000000.123456789', 'atime': '1700000000.5', 'SCHILY.xattr.user.note': 'v'}}),
    ('big-ids', tarfile.REGTYPE, {'uid': 3000000, 'gid': 4000000}),
])
py('py-pax-global', tarfile.PAX_FORMAT, COMMON, pax_headers={'comment': 'global', 'mtime': '1234567890', 'uid': '4242'})
py('py-gnu', tarfile.GNU_FORMAT, COMMON + [
    ('dir/' + NON_UTF8, tarfile.REGTYPE, {'data': b'gnu raw\n'}),
    ('long-link', tarfile.SYMTYPE, {'link': 'x/' * 70 + 'target'}),
    ('big-ids', tarfile.REGTYPE, {'uid': 3000000, 'gid': 4000000}),
])
py('py-ustar', tarfile.USTAR_FORMAT, COMMON + [('dir/' + NON_UTF8, tarfile.REGTYPE, {'data': b'ustar raw\n'})])

# ---- hand-made header forms -------------------------------------------------------------

# Several pax headers in a row: only the last applies (the first's path and mtime are lost).
write('pax-consecutive', pax([(b'path', b'first-lost'), (b'mtime', b'1000')]) + pax([(b'path', b'second'), (b'uid', b'77')])
      + file(b'ustar-name', b'x\n') + END)
# Many pax headers in a row (a thousand): still one entry.
write('pax-many', b''.join(pax([(b'comment', b'%d' % i)]) for i in range(1000)) + file(b'after-many', b'y\n') + END)
# A pax global header between entries: an entry of its own, applied to nothing.
write('pax-global-middle', file(b'a', b'a\n') + pax([(b'path', b'global-name'), (b'mtime', b'1'), (b'uid', b'9')], b'g', b'pax_global_header')
      + file(b'b', b'b\n', mtime=1500000000) + END)
# Two global headers with one name: tar-split refuses the duplicate path.
write('pax-global-twice', pax([(b'comment', b'1')], b'g', b'pax_global_header') + file(b'a', b'a\n')
      + pax([(b'comment', b'2')], b'g', b'pax_global_header') + END)
# A pax header before a global header: replaced by it, lost.
write('pax-then-global', pax([(b'path', b'lost-path')]) + pax([(b'comment', b'g')], b'g', b'g-entry') + file(b'kept', b'k\n') + END)
# A layer that is a lone pax header (with and without end blocks), or a lone global header.
write('lone-pax', pax([(b'path', b'nothing')]) + END)
write('lone-pax-no-end', pax([(b'path', b'nothing')]))
write('lone-global', pax([(b'comment', b'only')], b'g', b'pax_global_header') + END)
# Empty pax values keep the header's own; an empty xattr value sets no xattr.
write('pax-empty-values', pax([(b'path', b''), (b'uid', b''), (b'SCHILY.xattr.user.empty', b''), (b'SCHILY.xattr.user.full', b'1')])
      + file(b'own-name', b'e\n', uid=55) + END)
# pax path / linkpath that are not UTF-8, and a hard link to such a name.
write('pax-raw-names', pax([(b'path', b'caf\xe9')]) + file(b'cafe', b'latin-1 name\n')
      + pax([(b'linkpath', b'caf\xe9')]) + block(b'hl', b'1') + pax([(b'linkpath', b'\xff\xfe')]) + block(b'sl', b'2') + END)
# A GNU long name wins over a pax path.
write('gnu-long-over-pax', pax([(b'path', b'pax-name')]) + block(b'././@LongLink', b'L', 15, magic=b'ustar  \x00') + pad(b'gnu-long-name\0\0')
      + file(b'short', b'l\n', magic=b'ustar  \x00') + END)
# Old GNU headers: a prefix where GNU keeps atime/ctime (Go < 1.8 wrote these) is used as a
# prefix; numbers there are times (atime after mtime is kept).
write('oldgnu-prefix', file(b'file', b'p\n', magic=b'ustar  \x00', prefix=b'go17/prefix') + END)
write('oldgnu-atime', file(b'timed', b't\n', magic=b'ustar  \x00', gnu_times=(1700000000, 1700000001)) + END)
# ustar prefix; star (131-byte prefix, atime); v7 (no magic: no owner names, no prefix).
write('ustar-prefix', file(b'name', b'u\n', prefix=b'ustar/pre') + END)
write('star', file(b'starfile', b's\n', star=(b'stardir', 1800000000, 1800000001)) + END)
write('v7', file(b'v7file', b'v\n', magic=b'', prefix=b'ignored') + block(b'v7dir/', b'\0', magic=b'') + block(b'v7dir/sub/', b'5', magic=b'') + END)
# A signed checksum (bytes >= 0x80 in the block), accepted by Go.
write('signed-checksum', file(b'sign-\xe9\xe8', b'c\n', signed=True) + END)
# Base-256 numbers (uid, size, mtime before the epoch).
def b256(value, width):
    v = value if value >= 0 else (1 << (8 * width)) + value
    out = bytearray(v.to_bytes(width, 'big'))
    out[0] |= 0x80
    return bytes(out)
def with_fields(blk, **fields):
    b = bytearray(blk)
    for off, val in fields.values():
        b[off:off + len(val)] = val
    b[148:156] = b' ' * 8
    b[148:156] = (b'%06o' % sum(b)) + b'\0 '
    return bytes(b)
write('base256', with_fields(block(b'b256', b'0', 2, magic=b'ustar  \x00'), uid=(108, b256(5000000, 8)), mtime=(136, b256(-100, 12))) + pad(b'b\n') + END)
# Trailing garbage after the end blocks (kept by tar-split).
write('trailing-data', file(b'f', b'f\n') + END + b'\0' * 4096 + b'junk' * 100)

# ---- broken ---------------------------------------------------------------------------------
write('broken-zero-then-header', file(b'a', b'a\n') + b'\0' * 512 + file(b'b', b'b\n') + END)
write('broken-checksum', file(b'a', b'a\n', checksum_delta=1) + END)
write('broken-pax-nul-padding', block(b'PaxHeaders/x', b'x', 512) + (record(b'path', b'p') + b'\0' * 512)[:512] + file(b'a', b'a\n') + END)
write('broken-pax-number', pax([(b'size', b'abc')]) + file(b'a', b'a\n') + END)
write('broken-pax-huge', pax([(b'comment', b'A' * (1536 * 1024))]) + file(b'a', b'a\n') + END)
write('broken-truncated', file(b'a', b'a' * 2000)[:1024])
write('broken-contiguous', block(b'c7', b'7', 2) + pad(b'c\n') + END)
