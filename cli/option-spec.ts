/**
 * A command's options, defined once (cli/specs/): the argument parser, `--help` and the README's
 * option tables (scripts/cli-docs.ts) are all produced from the same definition, so none of them can
 * name a flag, a default or a meaning the others lack. test/unit/cli-docs.test.ts holds them to it.
 */
import { parseArgs } from 'node:util';

import { InvalidArgumentError, InvalidUrlError, redactUrl } from '../core/errors.js';

export interface OptionSpec {
  readonly type: 'string' | 'boolean';
  /** Repeatable: the values are collected in an array. */
  readonly multiple?: boolean;
  /**
   * A one-letter alias (`-o`), for the flags typed most. The long form stays the documented one (tables,
   * `--help` labels); the meaning mentions the alias.
   */
  readonly short?: string;
  /** The value's name in `--help` and the docs (URL, SIZE, DUR); none for a boolean. */
  readonly value?: string;
  /** Applied by the parser when the flag is absent, and documented as the default. */
  readonly default?: string | boolean;
  /**
   * The default as documented (markdown) when the parser does not apply one: `required`, or what the
   * API the value goes to does without it ('`8GiB`', 'none'). Checked against the API where it can be.
   */
  readonly shown?: string;
  /** The accepted values: anything else is a usage error naming the flag. */
  readonly choices?: readonly string[];
  /** What it does, for `--help` and the README (markdown: `--help` drops backticks and keeps a link's text). */
  readonly meaning: string;
  /** A heading in `--help` ("sources (one)", "security"); options without one come first. */
  readonly group?: string;
  /** The API option this flag fills: an error the API raises about that option is reported as the flag. */
  readonly api?: string;
}

export type OptionSpecs = Readonly<Record<string, OptionSpec>>;

export interface CommandSpec<O extends OptionSpecs = OptionSpecs> {
  readonly name: string;
  /** One line, in `lazysnap --help`. */
  readonly summary: string;
  /** The synopsis lines, each after `lazysnap `. */
  readonly synopsis: readonly string[];
  /** What the command does (plain text, already wrapped), before the options in `--help`. */
  readonly description: string;
  readonly options: O;
  /** Printed after the options in `--help` (plain text, already wrapped). */
  readonly notes?: string;
}

/** The documented default of an option, in markdown ('' when it has none). */
export function documentedDefault(o: OptionSpec): string {
  if (o.shown !== undefined) return o.shown;
  if (o.default === false) return 'off';
  if (typeof o.default === 'string') return `\`${o.default}\``;
  return '';
}

/** The values parseArgs gives for these options: a string (or array) per string flag, a boolean per boolean. */
export type Values<O extends OptionSpecs> = ReturnType<
  typeof parseArgs<{ args: string[]; options: O; strict: true; allowPositionals: false }>
>['values'];

/**
 * Parses argv strictly against the spec (unknown flags, positionals and missing values are errors
 * from node:util parseArgs) and checks `choices`.
 */
export function parseOptions<const O extends OptionSpecs>(spec: CommandSpec<O>, argv: string[]): Values<O> {
  const { values } = parseArgs({ args: argv, options: spec.options, strict: true, allowPositionals: false });
  checkChoices(spec, values);
  return values;
}

function checkChoices(spec: CommandSpec, values: object): void {
  for (const [name, o] of Object.entries(spec.options)) {
    const v = (values as Record<string, unknown>)[name];
    if (o.choices && typeof v === 'string' && !o.choices.includes(v))
      throw new InvalidArgumentError(`--${name}`, `one of ${o.choices.join(', ')}`, v);
  }
}

/**
 * parseOptions for a command that also takes operands (`lazysnap trace FILE`): the options, checked the
 * same way, and the operands in order. How many it needs is the command's to check.
 */
export function parseCommandLine<const O extends OptionSpecs>(
  spec: CommandSpec<O>,
  argv: string[],
): { values: Values<O>; operands: string[] } {
  const { values, positionals } = parseArgs({
    args: argv,
    options: spec.options,
    strict: true,
    allowPositionals: true,
  });
  checkChoices(spec, values);
  return { values, operands: positionals };
}

/**
 * An API's InvalidArgumentError about an option a flag fills, reported as that flag: the user typed
 * `--fail-closed`, not `failClosed`. Any other error is returned unchanged.
 */
export function asFlagError(spec: CommandSpec, e: unknown, argv: readonly string[] = []): unknown {
  if (e instanceof InvalidUrlError) {
    // A URL the user typed: name the flag it came with (--store, --profile-store, --s3-endpoint).
    const flag = flagWithValue(spec, argv, (v) => redactUrl(v) === e.url);
    if (flag !== undefined && !e.message.startsWith('--')) e.message = `--${flag}: ${e.message}`;
    return e;
  }
  if (!(e instanceof InvalidArgumentError)) return e;
  const flag = Object.entries(spec.options).find(([, o]) => o.api === e.argument)?.[0];
  if (flag === undefined || !e.message.startsWith(`${e.argument} `)) return e;
  return Object.assign(new InvalidArgumentError(`--${flag}`, '', ''), {
    message: `--${flag}${e.message.slice(e.argument.length)}`,
    cause: e,
  });
}

/** The string option of `spec` given in `argv` (`--x v` or `--x=v`) with a value that `matches`. */
function flagWithValue(
  spec: CommandSpec,
  argv: readonly string[],
  matches: (value: string) => boolean,
): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([^=]+)(?:=(.*))?$/s.exec(argv[i]!);
    if (!m || spec.options[m[1]!]?.type !== 'string') continue;
    const value = m[2] ?? argv[i + 1];
    if (value !== undefined && matches(value)) return m[1];
  }
  return undefined;
}

/** Markdown as terminal text: no backticks, a link becomes its text. */
const plain = (md: string) => md.replace(/`/g, '').replace(/\[([^\]]+)\]\([^)]+\)/g, '$1');

const WIDTH = 104;
const LABEL = 25;

/** Words filled into lines of `width` columns, the first `first` columns. */
function wrap(text: string, first: number, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > (lines.length === 0 ? first : width)) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

export const flagLabel = (name: string, o: OptionSpec) => `--${name}${o.value ? ` ${o.value}` : ''}`;

/** `lazysnap <command> --help`. */
export function formatHelp(spec: CommandSpec): string {
  const out = spec.synopsis.map((s, i) => `${i === 0 ? 'usage: ' : '       '}lazysnap ${s}`);
  out.push('', spec.description.trimEnd());
  const groups = new Map<string, [string, OptionSpec][]>();
  for (const entry of Object.entries(spec.options)) {
    const g = entry[1].group ?? 'options';
    groups.set(g, [...(groups.get(g) ?? []), entry]);
  }
  for (const [group, entries] of groups) {
    out.push('', `${group}:`);
    for (const [name, o] of entries) {
      // A flag that is off unless given needs no "(default: off)".
      const d = o.type === 'boolean' ? '' : documentedDefault(o);
      const text = `${plain(o.meaning)}${d === 'required' ? ' (required)' : d ? ` (default: ${plain(d)})` : ''}`;
      const label = `  ${flagLabel(name, o)}`;
      const first = label.length < LABEL - 1 ? label.padEnd(LABEL) : `${label}  `;
      const [head = '', ...rest] = wrap(text, WIDTH - first.length, WIDTH - LABEL);
      out.push(`${first}${head}`);
      for (const l of rest) out.push(`${' '.repeat(LABEL)}${l}`);
    }
  }
  if (spec.notes) out.push('', spec.notes.trimEnd());
  return `${out.join('\n')}\n`;
}

/** The README's table of a command's options (markdown). */
export function formatOptionTable(spec: CommandSpec): string {
  const rows = Object.entries(spec.options).map(([name, o]) => {
    const d = documentedDefault(o);
    return `| \`${flagLabel(name, o)}\` |${d ? ` ${d} ` : ' '}| ${o.meaning.replace(/\|/g, '\\|')} |`;
  });
  return ['| option | default | meaning |', '|---|---|---|', ...rows].join('\n');
}
