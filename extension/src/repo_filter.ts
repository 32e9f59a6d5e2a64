// repo_filter.ts — which workspace files may go into the model's context:
// not ignored by a .gitignore, not binary, not generated, not huge, valid
// UTF-8. Pure (no vscode), shared by the context assembly and its tests.
import ignore, { type Ignore } from 'ignore';

/** Folders never worth reading (also excluded from the file search itself). */
export const SKIP_DIRS = ['.git', 'node_modules', 'dist', 'out', 'build', '.next', 'target', '__pycache__', '.venv', 'venv', 'coverage', '.cache'];
export const MAX_FILE_BYTES = 256 * 1024;

const GENERATED = [/\.min\.(js|css)$/, /\.map$/, /(^|\/)package-lock\.json$/, /(^|\/)yarn\.lock$/, /(^|\/)pnpm-lock\.yaml$/, /\.lock$/, /\.vsix$/];
const BINARY_EXT = /\.(png|jpe?g|gif|bmp|ico|webp|pdf|zip|gz|tgz|xz|bz2|7z|jar|class|so|dylib|dll|exe|o|a|node|wasm|bin|gguf|safetensors|pt|onnx|mp3|mp4|wav|ogg|woff2?|ttf|otf|eot|psd|sqlite|db|vsix)$/i;

/** Why a path is left out by its name alone, or undefined. */
export function skipByName(path: string): string | undefined {
  const parts = path.split('/');
  if (parts.some((p) => SKIP_DIRS.includes(p))) return 'skipped folder';
  if (BINARY_EXT.test(path)) return 'binary file type';
  if (GENERATED.some((re) => re.test(path))) return 'generated file';
  return undefined;
}

/** Text of a file's bytes, or undefined when it is binary or not UTF-8. */
export function decodeText(bytes: Uint8Array): string | undefined {
  if (bytes.includes(0)) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

/** The exclude glob for vscode.workspace.findFiles: files.exclude entries that are on, plus SKIP_DIRS. */
export function excludeGlob(filesExclude: Record<string, unknown> | undefined): string {
  const globs = Object.entries(filesExclude ?? {}).filter(([, on]) => on === true).map(([g]) => g);
  globs.push(...SKIP_DIRS.map((d) => `**/${d}/**`));
  return `{${globs.join(',')}}`;
}

/** All .gitignore files of a tree, each applying to its own folder and below. */
export class GitignoreSet {
  private readonly rules = new Map<string, Ignore>();

  /** `dir` is the folder holding the .gitignore, relative, '' for the root. */
  add(dir: string, text: string): void {
    const ig = this.rules.get(dir) ?? ignore();
    ig.add(text);
    this.rules.set(dir, ig);
  }

  ignores(path: string): boolean {
    for (const [dir, ig] of this.rules) {
      if (dir !== '' && !path.startsWith(dir + '/')) continue;
      const rel = dir === '' ? path : path.slice(dir.length + 1);
      if (rel && ig.ignores(rel)) return true;
    }
    return false;
  }
}
