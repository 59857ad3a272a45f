/**
 * Terraform for the infra tests, without providers (none can be downloaded here): HCL parsed to
 * JSON by @cdktf/hcl2json, and expressions evaluated by the real terraform binary's `console`,
 * which needs no provider when the configuration declares no resources.
 *
 * Where terraform is absent, `terraformSkipReason` says so and the suites that run it skip with it
 * in their name; the HCL assertions need only hcl2json and always run.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { findExecutable } from './system.js';

// Loaded by a computed specifier, untyped: the package's types reference lib.dom, which would put
// browser globals (and their own WebAssembly declarations) into the whole project's type check.
const HCL2JSON = '@cdktf/hcl2json';
const { parse } = (await import(HCL2JSON)) as {
  parse: (filename: string, contents: string) => Promise<Record<string, unknown>>;
};

export const terraformPath = findExecutable('terraform', ['/usr/local/bin', '/usr/bin']);
export const terraformSkipReason = terraformPath
  ? ''
  : 'terraform is not installed (not on PATH nor in /usr/local/bin)';
if (!terraformPath) console.warn(`[lazysnap tests] skipping terraform suites: ${terraformSkipReason}`);

/** A parsed .tf file, as hcl2json shapes it: blocks are arrays, expressions are "${...}" strings. */
export type Hcl = Record<string, any>;

/** Every .tf file of `dir` (not recursive), parsed, by file name. */
export async function loadHcl(dir: string): Promise<Record<string, Hcl>> {
  const out: Record<string, Hcl> = {};
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith('.tf'))
    .sort())
    out[f] = await parse(f, readFileSync(path.join(dir, f), 'utf8'));
  return out;
}

/** Runs terraform with no CLI configuration and no calls home; throws with its stderr on failure. */
export function terraform(args: string[], opts: { cwd: string; input?: string }): string {
  if (!terraformPath) throw new Error(terraformSkipReason);
  const r = spawnSync(terraformPath, args, {
    cwd: opts.cwd,
    input: opts.input ?? '',
    encoding: 'utf8',
    maxBuffer: 16 * 1024 * 1024,
    // An empty CLI configuration (without one, terraform warns that ~/.terraformrc is missing, and
    // a developer's own would change what runs); no version check calls home.
    env: {
      ...process.env,
      TF_CLI_CONFIG_FILE: '/dev/null',
      TF_IN_AUTOMATION: '1',
      CHECKPOINT_DISABLE: '1',
      NO_COLOR: '1',
    },
  });
  if (r.status !== 0)
    throw new Error(`terraform ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** A string literal for HCL: JSON escapes, plus the template escapes for `${` and `%{`. */
export function hclString(s: string): string {
  return JSON.stringify(s).replaceAll('${', '$${').replaceAll('%{', '%%{');
}

/** Evaluates a string-valued HCL expression with terraform console, in `dir`. */
function evalString(dir: string, expr: string): string {
  // base64 keeps the value clear of console's own quoting; one expression per line.
  const out = terraform(['console'], {
    cwd: dir,
    input: `base64encode(${expr.replaceAll('\n', ' ')})\n`,
  }).trim();
  const m = /^"([A-Za-z0-9+/=]*)"$/.exec(out);
  if (!m)
    throw new Error(`terraform console printed ${JSON.stringify(out.slice(0, 200))}, not a base64 string`);
  return Buffer.from(m[1]!, 'base64').toString('utf8');
}

/** Terraform's own templatefile() of `file` with `vars` (HCL expressions, e.g. hclString('x')). */
export function templatefile(file: string, vars: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-tf-'));
  try {
    const obj = Object.entries(vars)
      .map(([k, v]) => `${k} = ${v}`)
      .join(', ');
    return evalString(dir, `templatefile(${hclString(file)}, { ${obj} })`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The `locals { ... }` blocks of a .tf file's source, verbatim. */
function localsBlocks(source: string): string[] {
  const blocks: string[] = [];
  for (const m of source.matchAll(/^locals\s*\{/gm)) {
    let depth = 0;
    for (let i = m.index + m[0].length - 1; i < source.length; i++) {
      if (source[i] === '{') depth++;
      else if (source[i] === '}' && --depth === 0) {
        blocks.push(source.slice(m.index, i + 1));
        break;
      }
    }
  }
  return blocks;
}

/**
 * A module's local value, evaluated by terraform from the module's own source: its variables.tf
 * and its locals blocks, verbatim, in a scratch root module with no provider. References to
 * resources and data sources, which need a provider, must be given values in `stubs` (expression
 * text → HCL replacement); path.module becomes the module's real directory, so file() and
 * templatefile() read the module's files. `vars` are the input variables (terraform.tfvars.json).
 */
export function evalModuleLocal(
  moduleDir: string,
  name: string,
  opts: { vars: Record<string, unknown>; stubs: Record<string, string> },
): string {
  let locals = readdirSync(moduleDir)
    .filter((f) => f.endsWith('.tf'))
    .flatMap((f) => localsBlocks(readFileSync(path.join(moduleDir, f), 'utf8')))
    .join('\n\n');
  for (const [ref, value] of Object.entries({
    ...opts.stubs,
    'path.module': hclString(path.resolve(moduleDir)),
  }))
    locals = locals.replaceAll(ref, value);
  const left = /\b(?:data\.[a-z0-9_]+\.[a-z0-9_]+|aws_[a-z0-9_]+\.[a-z0-9_]+)\.[a-z_]+/.exec(locals);
  if (left) throw new Error(`${moduleDir}: the locals use ${left[0]}, which needs a provider: stub it`);
  const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-tf-'));
  try {
    writeFileSync(path.join(dir, 'variables.tf'), readFileSync(path.join(moduleDir, 'variables.tf')));
    writeFileSync(path.join(dir, 'locals.tf'), locals);
    writeFileSync(path.join(dir, 'terraform.tfvars.json'), JSON.stringify(opts.vars));
    return evalString(dir, `local.${name}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
