// Bad repositories for the context assembly (server/src/context/repo.ts, used by the CLI):
// binary files, a 50 MB file, invalid UTF-8, a symlink loop, no files at all. Each is
// skipped with a reason, the good files still come through, and nothing hangs or throws.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { collectRepoFiles } from '../../server/src/context/repo';

function tempRepo(): string {
  return mkdtempSync(join(tmpdir(), 'specode-badrepo-'));
}

test('bad files are skipped with a reason; the good ones come through', () => {
  const root = tempRepo();
  try {
    mkdirSync(join(root, 'src', 'deep'), { recursive: true });
    writeFileSync(join(root, 'src', 'good.ts'), 'export const answer = 42;\n');
    writeFileSync(join(root, 'logo.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 3]));
    writeFileSync(join(root, 'blob.dat'), Buffer.from([104, 105, 0, 105]));
    writeFileSync(join(root, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0a]));
    writeFileSync(join(root, 'huge.ts'), '');
    truncateSync(join(root, 'huge.ts'), 50 * 1024 * 1024);  // 50 MB (sparse: nothing is read)
    symlinkSync('..', join(root, 'src', 'deep', 'loop'));    // a directory symlink back up the tree
    const t0 = performance.now();
    const r = collectRepoFiles(root);
    assert.ok(performance.now() - t0 < 5000, 'no crawl through the loop');
    assert.deepEqual(
      r.files.map((f) => f.path),
      ['src/good.ts'],
    );
    const reason = (p: string) => r.skipped.find((s) => s.path === p)?.reason;
    assert.equal(reason('logo.png'), 'binary file type');
    assert.equal(reason('blob.dat'), 'binary content');
    assert.equal(reason('latin1.txt'), 'not valid UTF-8');
    assert.match(reason('huge.ts') ?? '', /larger than/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a repository with no files gives an empty context, not an error', () => {
  const root = tempRepo();
  try {
    assert.deepEqual(collectRepoFiles(root), { files: [], skipped: [] });
    mkdirSync(join(root, 'empty', 'dirs'), { recursive: true });
    writeFileSync(join(root, 'empty', 'zero.ts'), '');
    assert.deepEqual(collectRepoFiles(root).files, []);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
