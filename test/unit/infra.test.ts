/**
 * infra/: the Terraform modules, the systemd units, the cache tier. No provider can be downloaded
 * here, so structure is asserted on HCL parsed by @cdktf/hcl2json, and what Terraform renders
 * (templatefile, the modules' locals) is rendered by the real terraform binary (`console` needs no
 * provider). Then the rendered pieces are run: nginx with the cache tier's configuration, the
 * signing S3 origin against s3rver, and lazysnap serve started exactly as the systemd unit and the
 * user data's environment file start it, restoring through the cache tier.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { usage as serveUsage } from '../../cli/commands/serve.js';
import { NotFoundError } from '../../core/errors.js';
import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { HttpStore } from '../../store/http-store.js';
import { chunkKey, manifestKey, profileKey, vmstateKey } from '../../store/keys.js';
import { S3Store } from '../../store/s3-store.js';
import { repoRoot } from '../helpers/fixtures.js';
import { runClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import {
  CACHE_TIER_TEMPLATE,
  nginxSkipReason,
  renderTemplate,
  startCacheTier,
  startNginx,
  type NginxServer,
} from '../helpers/nginx.js';
import { freePort } from '../helpers/system.js';
import { S3RVER_CREDENTIALS, startS3rver, useS3rverEnv, type S3rverHandle } from '../helpers/s3rver.js';
import { hasUffd, uffdSkipReason } from '../helpers/skip.js';
import {
  evalModuleLocal,
  hclString,
  loadHcl,
  templatefile,
  terraform,
  terraformSkipReason,
  type Hcl,
} from '../helpers/terraform.js';

const INFRA = path.join(repoRoot, 'infra');
const MODULES = ['chunk-store', 'iam', 'restore-fleet', 'cache-tier'];
const moduleDir = (m: string) => path.join(INFRA, 'modules', m);
const UNIT = path.join(INFRA, 'systemd', 'lazysnap@.service');
const ORIGIN_UNIT = path.join(moduleDir('cache-tier'), 's3-origin.service');
const ORIGIN_SCRIPT = path.join(moduleDir('cache-tier'), 's3-origin.mjs');
const skipName = (name: string, reason: string) => (reason ? `${name} [SKIPPED: ${reason}]` : name);

// ---- helpers ---------------------------------------------------------------------------------

/** Every block of `type` across a module's files: resource "aws_x" "name" → { 'aws_x.name': body }. */
function blocks(files: Record<string, Hcl>, type: 'resource' | 'data'): Record<string, Hcl> {
  const out: Record<string, Hcl> = {};
  for (const f of Object.values(files))
    for (const [kind, byName] of Object.entries(f[type] ?? {}))
      for (const [name, list] of Object.entries(byName as Record<string, Hcl[]>))
        out[`${kind}.${name}`] = list[0]!;
  return out;
}

/** The statements of a policy document, including dynamic ones. */
function statements(doc: Hcl): Hcl[] {
  return [...(doc.statement ?? []), ...(doc.dynamic?.statement ?? []).flatMap((d: Hcl) => d.content)];
}

/** An "${...}" expression as text: the template string that names a templatefile() or file(). */
function pathsCalled(expr: string, fn: 'templatefile' | 'file', dir: string): string[] {
  return [...expr.matchAll(new RegExp(`\\b${fn}\\("\\$\\{path\\.module\\}/([^"]+)"`, 'g'))].map((m) =>
    path.resolve(dir, m[1]!),
  );
}

/** The ${name} placeholders (and %{ for x in name } lists) a template uses, loop variables aside. */
function placeholders(template: string): Set<string> {
  const names = new Set<string>();
  const loopVars = new Set<string>();
  for (const m of template.matchAll(/%\{\s*for\s+(\w+)\s+in\s+([A-Za-z_]\w*)/g)) {
    loopVars.add(m[1]!);
    names.add(m[2]!);
  }
  for (const m of template.matchAll(/(?<!\$)\$\{\s*([A-Za-z_]\w*)/g))
    if (!loopVars.has(m[1]!)) names.add(m[1]!);
  return names;
}

/** The keys of the object literal given to templatefile(<path>, {...}) in an expression. */
function templateKeys(expr: string): string[] {
  const body = /templatefile\([^,]+,\s*\{([\s\S]*)\}\s*\)/.exec(expr)?.[1] ?? '';
  return [...body.matchAll(/^\s*(\w+)\s*=/gm)].map((m) => m[1]!);
}

/** A systemd unit as key → values, in order (keys may repeat). */
function parseUnit(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv) m.set(kv[1]!, [...(m.get(kv[1]!) ?? []), kv[2]!]);
  }
  return m;
}

/** An EnvironmentFile's KEY=VALUE lines (double quotes stripped), as systemd reads them. */
function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const kv = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (kv) env[kv[1]!] = kv[2]!.replace(/^"(.*)"$/, '$1');
  }
  return env;
}

/**
 * ExecStart= as systemd turns it into argv: specifiers (%i, %t, %C) first, then `$VAR` split into
 * words and `${VAR}` as one word. Anything else with a `$` or `%` is refused, so the test can never
 * expand something systemd would expand differently.
 */
function expandExecStart(line: string, env: Record<string, string>, spec: Record<string, string>): string[] {
  const withSpec = line.replace(/%(.)/g, (_m, c: string) => {
    if (spec[c] === undefined) throw new Error(`specifier %${c} not handled`);
    return spec[c];
  });
  return withSpec
    .split(/\s+/)
    .filter(Boolean)
    .flatMap((w) => {
      const one = /^\$\{(\w+)\}$/.exec(w);
      const split = /^\$(\w+)$/.exec(w);
      const name = one?.[1] ?? split?.[1];
      if (name === undefined) {
        if (w.includes('$')) throw new Error(`variable use ${w} not handled`);
        return [w];
      }
      const v = env[name];
      if (v === undefined) throw new Error(`$${name} is not set by the environment files`);
      return one ? [v] : v.split(/\s+/).filter(Boolean);
    });
}

/** What `cat > <file> <<'LAZYSNAP_EOF'` ... in a rendered user data script writes to <file>. */
function heredoc(script: string, file: string): string {
  const start = `cat > ${file} <<'LAZYSNAP_EOF'\n`;
  const i = script.indexOf(start);
  if (i < 0) throw new Error(`the script writes no ${file}`);
  const end = script.indexOf('\nLAZYSNAP_EOF\n', i + start.length);
  return `${script.slice(i + start.length, end)}\n`;
}

/** Access-log lines (split on spaces) whose URI starts with `prefix`, polling until `count` are in. */
async function logLines(file: string, uriField: number, prefix: string, count: number): Promise<string[][]> {
  for (let i = 0; ; i++) {
    const lines = existsSync(file)
      ? readFileSync(file, 'utf8')
          .split('\n')
          .map((l) => l.split(' '))
          .filter((f) => f[uriField]?.startsWith(prefix))
      : [];
    if (lines.length >= count || i > 100) return lines;
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---- formatting and structure ----------------------------------------------------------------

describe(skipName('terraform fmt', terraformSkipReason), () => {
  it.skipIf(!!terraformSkipReason)(
    'every .tf file under infra/ is formatted (terraform fmt -check -recursive infra)',
    () => {
      expect(terraform(['fmt', '-check', '-recursive', '-list=true', 'infra'], { cwd: repoRoot })).toBe('');
    },
  );
});

// Providers cannot be downloaded here; where a local mirror of hashicorp/aws exists, validate the
// complete example (every module) against the provider's real schema in a scratch copy.
const pluginDir = process.env.LAZYSNAP_TF_PLUGIN_DIR ?? '/opt/tf-plugins';
const validateSkip =
  terraformSkipReason ||
  (existsSync(path.join(pluginDir, 'registry.terraform.io', 'hashicorp', 'aws'))
    ? ''
    : `no local provider mirror at ${pluginDir} (set LAZYSNAP_TF_PLUGIN_DIR)`);

describe(skipName('terraform validate', validateSkip), () => {
  it.skipIf(!!validateSkip)(
    'the complete example, with every module, is valid against the aws provider schema, without warnings',
    () => {
      const tmp = tempDir('lazysnap-tf-validate-');
      try {
        cpSync(INFRA, path.join(tmp.dir, 'infra'), { recursive: true });
        const example = path.join(tmp.dir, 'infra', 'examples', 'complete');
        terraform(['init', '-backend=false', '-input=false', `-plugin-dir=${pluginDir}`], { cwd: example });
        const result = JSON.parse(terraform(['validate', '-json'], { cwd: example })) as {
          valid: boolean;
          warning_count: number;
          diagnostics: unknown[];
        };
        expect(result).toMatchObject({ valid: true, warning_count: 0, diagnostics: [] });
      } finally {
        tmp.cleanup();
      }
    },
  );
});

describe('Terraform modules (HCL parsed with hcl2json)', () => {
  const hcl: Record<string, Record<string, Hcl>> = {};
  beforeAll(async () => {
    for (const m of MODULES) hcl[m] = await loadHcl(moduleDir(m));
    hcl.example = await loadHcl(path.join(INFRA, 'examples', 'complete'));
  });

  it('each module has main, variables, outputs, versions (aws provider pinned to a range) and a README', () => {
    for (const m of MODULES) {
      expect(Object.keys(hcl[m]!).sort(), m).toEqual([
        'main.tf',
        'outputs.tf',
        'variables.tf',
        'versions.tf',
      ]);
      expect(existsSync(path.join(moduleDir(m), 'README.md')), m).toBe(true);
      const aws = hcl[m]!['versions.tf']!.terraform[0].required_providers[0].aws;
      expect(aws.source, m).toBe('hashicorp/aws');
      expect(aws.version, m).toMatch(/>=\s*[\d.]+,\s*<\s*[\d.]+/);
    }
  });

  it("each README's inputs and outputs tables list exactly the module's variables and outputs", () => {
    for (const [m, files] of Object.entries(hcl)) {
      const readme = readFileSync(
        path.join(m === 'example' ? path.join(INFRA, 'examples', 'complete') : moduleDir(m), 'README.md'),
        'utf8',
      );
      const section = (title: string) =>
        [...(readme.split(`## ${title}`)[1] ?? '').split('\n## ')[0]!.matchAll(/^\| `(\w+)` \|/gm)]
          .map((x) => x[1]!)
          .sort();
      const names = (kind: 'variable' | 'output') =>
        Object.values(files)
          .flatMap((f) => Object.keys(f[kind] ?? {}))
          .sort();
      expect(section('Inputs'), m).toEqual(names('variable'));
      expect(section('Outputs'), m).toEqual(names('output'));
    }
  });

  it('every variable is typed and described, every output described (modules and the example)', () => {
    let n = 0;
    for (const [m, files] of Object.entries(hcl)) {
      for (const f of Object.values(files)) {
        for (const [name, [v]] of Object.entries((f.variable ?? {}) as Record<string, Hcl[]>)) {
          expect(v!.type, `${m}: variable ${name} has no type`).toMatch(/^\$\{[\s\S]+\}$/);
          expect(
            String(v!.description ?? '').trim().length,
            `${m}: variable ${name} has no description`,
          ).toBeGreaterThan(10);
          n++;
        }
        for (const [name, [o]] of Object.entries((f.output ?? {}) as Record<string, Hcl[]>)) {
          expect(
            String(o!.description ?? '').trim().length,
            `${m}: output ${name} has no description`,
          ).toBeGreaterThan(10);
        }
      }
    }
    expect(n).toBeGreaterThan(50);
  });

  it('chunk-store: all public access blocked, SSE-KMS with a customer key and bucket keys, rotation on', () => {
    const r = blocks(hcl['chunk-store']!, 'resource');
    expect(r['aws_s3_bucket_public_access_block.this']).toMatchObject({
      block_public_acls: true,
      block_public_policy: true,
      ignore_public_acls: true,
      restrict_public_buckets: true,
    });
    const sse = r['aws_s3_bucket_server_side_encryption_configuration.this']!.rule[0];
    expect(sse.apply_server_side_encryption_by_default[0]).toEqual({
      sse_algorithm: 'aws:kms',
      kms_master_key_id: '${local.kms_key_arn}',
    });
    expect(sse.bucket_key_enabled).toBe(true);
    expect(r['aws_kms_key.this']!.enable_key_rotation).toBe(true);
    expect(r['aws_s3_bucket_ownership_controls.this']!.rule[0].object_ownership).toBe('BucketOwnerEnforced');
    expect(r['aws_s3_bucket_policy.this']!.policy).toBe('${data.aws_iam_policy_document.bucket.json}');
  });

  it('chunk-store: the bucket policy denies every request without TLS, and old TLS', () => {
    const doc = blocks(hcl['chunk-store']!, 'data')['aws_iam_policy_document.bucket']!;
    const tls = statements(doc).find((s) =>
      s.condition?.some((c: Hcl) => c.variable === 'aws:SecureTransport'),
    );
    expect(tls).toMatchObject({
      effect: 'Deny',
      actions: ['s3:*'],
      principals: [{ type: '*', identifiers: ['*'] }],
      condition: [{ test: 'Bool', variable: 'aws:SecureTransport', values: ['false'] }],
    });
    expect(tls!.resources).toEqual(['${aws_s3_bucket.this.arn}', '${aws_s3_bucket.this.arn}/*']);
    expect(statements(doc).find((s) => s.condition?.[0].variable === 's3:TlsVersion')).toMatchObject({
      effect: 'Deny',
      condition: [{ test: 'NumericLessThan', values: ['1.2'] }],
    });
  });

  it('chunk-store: lifecycle aborts incomplete multipart uploads; versioning and replication are optional', () => {
    const r = blocks(hcl['chunk-store']!, 'resource');
    const rules = r['aws_s3_bucket_lifecycle_configuration.this']!.rule;
    expect(rules.find((x: Hcl) => x.abort_incomplete_multipart_upload)).toMatchObject({
      status: 'Enabled',
      abort_incomplete_multipart_upload: [
        { days_after_initiation: '${var.abort_incomplete_multipart_days}' },
      ],
    });
    expect(r['aws_s3_bucket_versioning.this']!.count).toBe('${local.versioning ? 1 : 0}');
    expect(r['aws_s3_bucket_replication_configuration.this']!.count).toBe(
      '${var.replication != null ? 1 : 0}',
    );
  });

  it('IAM: actions listed one by one, never a wildcard, in every Allow statement of every module', () => {
    let n = 0;
    for (const m of MODULES) {
      for (const [name, doc] of Object.entries(blocks(hcl[m]!, 'data')).filter(([k]) =>
        k.startsWith('aws_iam_policy_document.'),
      )) {
        for (const s of statements(doc)) {
          expect(s.not_actions, `${m} ${name}`).toBeUndefined();
          if ((s.effect ?? 'Allow') !== 'Allow') continue;
          for (const a of s.actions)
            expect(a, `${m} ${name} ${s.sid ?? ''}`).toMatch(/^[a-z0-9-]+:[A-Za-z0-9]+$/);
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(15);
  });

  it('IAM: object permissions are scoped to the store layout of store/keys.ts, under the store prefix', () => {
    const [locals] = hcl.iam!['main.tf']!.locals;
    const areas = [manifestKey('x'), chunkKey('0'.repeat(64), 'zstd'), profileKey('x'), vmstateKey('x')].map(
      (k) => k.split('/')[0]!,
    );
    expect(Object.keys(locals.objects).sort()).toEqual([...areas].sort());
    for (const a of areas) expect(locals.objects[a]).toBe(`\${var.bucket_arn}/\${local.prefix}${a}/*`);
    expect(locals.prefix).toBe('${var.store_prefix == "" ? "" : "${var.store_prefix}/"}');
  });

  it('IAM: each role gets exactly the S3 calls the code makes, on exactly its areas; restore hosts write only profiles', () => {
    const docs = blocks(hcl.iam!, 'data');
    /** action → the store areas (or "bucket", "key") it is granted on. */
    const grants = (doc: string) => {
      const g: Record<string, string[]> = {};
      for (const s of statements(docs[`aws_iam_policy_document.${doc}`]!)) {
        const on = (s.resources as string[]).map(
          (r) =>
            /^\$\{local\.objects\.(\w+)\}$/.exec(r)?.[1] ??
            ({ '${var.bucket_arn}': 'bucket', '${var.kms_key_arn}': 'key' } as Record<string, string>)[r] ??
            `?${r}`,
        );
        for (const a of s.actions as string[]) g[a] = [...(g[a] ?? []), ...on].sort();
      }
      return g;
    };
    const kms = { 'kms:Decrypt': ['key'], 'kms:GenerateDataKey': ['key'] };
    expect(grants('restore_host')).toEqual({
      's3:GetObject': ['chunks', 'manifests', 'profiles', 'vmstate'],
      's3:PutObject': ['profiles'],
      's3:ListBucket': ['bucket'],
      ...kms,
    });
    expect(grants('snapshotter')).toEqual({
      's3:GetObject': ['chunks', 'manifests'],
      's3:PutObject': ['chunks', 'manifests', 'vmstate'],
      's3:ListBucket': ['bucket'],
      's3:DeleteObject': ['chunks'],
      ...kms,
    });
    expect(grants('cache_tier')).toEqual({
      's3:GetObject': ['chunks', 'manifests', 'profiles', 'vmstate'],
      's3:ListBucket': ['bucket'],
      'kms:Decrypt': ['key'],
    });

    // The S3 calls store/s3-store.ts really makes, and the IAM action each needs.
    const needs: Record<string, string> = {
      GetObject: 's3:GetObject',
      HeadObject: 's3:GetObject',
      PutObject: 's3:PutObject',
      DeleteObject: 's3:DeleteObject',
      ListObjectsV2: 's3:ListBucket',
    };
    const used = [
      ...new Set(
        [
          ...readFileSync(path.join(repoRoot, 'store', 's3-store.ts'), 'utf8').matchAll(
            /new (\w+)Command\(/g,
          ),
        ].map((m) => m[1]!),
      ),
    ];
    for (const c of used) expect(needs[c], `${c}Command is not mapped to an IAM action`).toBeDefined();
    const granted = new Set(
      ['restore_host', 'snapshotter', 'cache_tier']
        .flatMap((d) => Object.keys(grants(d)))
        .filter((a) => a.startsWith('s3:')),
    );
    expect([...granted].sort()).toEqual([...new Set(used.map((c) => needs[c]!))].sort());

    // KMS use only through S3, for this bucket.
    for (const d of ['restore_host', 'snapshotter', 'cache_tier']) {
      const k = statements(docs[`aws_iam_policy_document.${d}`]!).find((s) =>
        s.actions.some((a: string) => a.startsWith('kms:')),
      );
      expect(k!.condition.map((c: Hcl) => c.variable).sort(), d).toEqual([
        'kms:EncryptionContext:aws:s3:arn',
        'kms:ViaService',
      ]);
    }
  });

  it('restore-fleet and cache-tier: IMDSv2 required, volumes encrypted, an ASG across the given subnets', () => {
    for (const m of ['restore-fleet', 'cache-tier']) {
      const r = blocks(hcl[m]!, 'resource');
      const lt = r['aws_launch_template.this']!;
      expect(lt.metadata_options[0], m).toMatchObject({
        http_endpoint: 'enabled',
        http_tokens: 'required',
        http_put_response_hop_limit: 1,
      });
      for (const b of lt.block_device_mappings) expect(b.ebs[0].encrypted, m).toBe(true);
      expect(lt.user_data, m).toBe('${base64gzip(local.user_data)}');
      expect(r['aws_autoscaling_group.this']!.vpc_zone_identifier, m).toBe('${var.subnet_ids}');
    }
    const fleet = blocks(hcl['restore-fleet']!, 'resource');
    expect(fleet['aws_launch_template.this']!.instance_type).toBe('${var.instance_type}');
    const defaultType = hcl['restore-fleet']!['variables.tf']!.variable.instance_type[0].default as string;
    expect(defaultType).toMatch(/\.metal/);
  });

  it('restore-fleet: no inbound but the metrics ports from the given CIDRs; an S3 gateway endpoint; a log group', () => {
    const r = blocks(hcl['restore-fleet']!, 'resource');
    expect(r['aws_security_group.hosts']!.ingress).toBeUndefined();
    expect(Object.keys(r).filter((k) => /ingress|aws_security_group_rule/.test(k))).toEqual([
      'aws_vpc_security_group_ingress_rule.metrics',
    ]);
    expect(r['aws_vpc_security_group_ingress_rule.metrics']).toMatchObject({
      for_each: '${toset(var.metrics_cidr_blocks)}',
      from_port: '${var.metrics_port}',
      to_port: '${var.metrics_port + var.max_snapshots_per_host - 1}',
      cidr_ipv4: '${each.value}',
    });
    expect(r['aws_vpc_endpoint.s3']).toMatchObject({
      vpc_endpoint_type: 'Gateway',
      route_table_ids: '${var.route_table_ids}',
    });
    expect(r['aws_cloudwatch_log_group.this']).toMatchObject({
      name: '/lazysnap/${var.name}',
      retention_in_days: '${var.log_retention_days}',
    });
  });

  it('restore-fleet: the longest snapshot id it accepts still fits the socket path the unit gives serve (107 bytes)', () => {
    const condition = hcl['restore-fleet']!['variables.tf']!.variable.snapshot_ids[0].validation[0]
      .condition as string;
    const longest = 1 + Number(/\{0,(\d+)\}/.exec(condition)![1]);
    const socket = /--socket (\S+)/.exec(readFileSync(UNIT, 'utf8'))![1]!.replace('%t', '/run');
    expect(Buffer.byteLength(socket.replace('%i', 'x'.repeat(longest)))).toBe(107);
  });

  it('restore-fleet: the user data is user-data.sh.tftpl given the systemd unit, and the template uses exactly the values given', () => {
    const dir = moduleDir('restore-fleet');
    const expr = hcl['restore-fleet']!['main.tf']!.locals[0].user_data as string;
    expect(pathsCalled(expr, 'templatefile', dir)).toEqual([path.join(dir, 'user-data.sh.tftpl')]);
    expect(pathsCalled(expr, 'file', dir)).toContain(UNIT);
    expect(expr).toMatch(
      /systemd_unit\s*=\s*chomp\(file\("\$\{path\.module\}\/\.\.\/\.\.\/systemd\/lazysnap@\.service"\)\)/,
    );
    expect(new Set(templateKeys(expr))).toEqual(
      placeholders(readFileSync(path.join(dir, 'user-data.sh.tftpl'), 'utf8')),
    );
  });

  it('cache-tier: nginx runs nginx.conf.tftpl, the file the HTTP-tier tests run through, with every placeholder given', () => {
    const dir = moduleDir('cache-tier');
    const [locals] = hcl['cache-tier']!['main.tf']!.locals;
    expect(pathsCalled(locals.nginx_conf, 'templatefile', dir)).toEqual([CACHE_TIER_TEMPLATE]);
    expect(new Set(templateKeys(locals.nginx_conf))).toEqual(
      placeholders(readFileSync(CACHE_TIER_TEMPLATE, 'utf8')),
    );
    expect(locals.user_data).toMatch(/nginx_conf\s*=\s*chomp\(local\.nginx_conf\)/);
    expect(new Set(templateKeys(locals.user_data))).toEqual(
      placeholders(readFileSync(path.join(dir, 'user-data.sh.tftpl'), 'utf8')),
    );
    // One nginx configuration for the tier in the repository: no copy for tests to drift from.
    const confs = (readdirSync(repoRoot, { recursive: true }) as string[]).filter(
      (f) => !f.startsWith('node_modules') && /nginx.*\.(conf|tftpl)$/.test(f),
    );
    expect(confs.sort()).toEqual(
      [
        path.relative(repoRoot, CACHE_TIER_TEMPLATE),
        path.join('test', 'fixtures', 'nginx-origin.conf'),
      ].sort(),
    );
  });

  it('the complete example wires every module', () => {
    const mods = hcl.example!['main.tf']!.module as Record<string, Hcl[]>;
    expect(
      Object.values(mods)
        .map(([m]) => m!.source)
        .sort(),
    ).toEqual(MODULES.map((m) => `../../modules/${m}`).sort());
    // The cache tier is the first store, S3 the fallback.
    const urls = mods.restore_fleet![0]!.store_urls as string[];
    expect(urls[0]).toMatch(/^\$\{module\.cache_tier\.url\}/);
    expect(urls[1]).toMatch(/^s3:\/\/\$\{module\.store\.bucket_name\}/);
  });
});

// ---- what Terraform renders ------------------------------------------------------------------

const FLEET_VARS = {
  name: 'test',
  vpc_id: 'vpc-1',
  subnet_ids: ['subnet-1', 'subnet-2'],
  instance_profile_name: 'p',
  instance_role_name: 'r',
  store_urls: ['http://cache.internal/prod', 's3://snaps/prod'],
  lazysnap_package: 'https://artifacts.example.com/lazysnap-0.1.0.tgz',
  snapshot_ids: ['fn-1', 'web.v2'],
  extra_serve_args: ['--prefetch', 'replay'],
};
const FLEET_STUBS = {
  'data.aws_region.current.id': '"eu-west-1"',
  'aws_cloudwatch_log_group.this.name': '"/lazysnap/test"',
};

describe(skipName('rendered by terraform', terraformSkipReason), () => {
  const tmp = tempDir('lazysnap-infra-');
  afterAll(() => tmp.cleanup());

  it.skipIf(!!terraformSkipReason)(
    "the tests' renderer of nginx.conf.tftpl gives byte for byte what templatefile() gives",
    () => {
      const vars = {
        user: 'nobody',
        worker_processes: '1',
        run_dir: '/tmp/a',
        log_dir: '/tmp/b',
        cache_dir: '/tmp/c',
        listen: '127.0.0.1:8080',
        origin: '127.0.0.1:8081',
        cache_max_size: '1g',
        keys_zone_size: '4m',
      };
      const ours = renderTemplate(readFileSync(CACHE_TIER_TEMPLATE, 'utf8'), vars);
      const theirs = templatefile(
        CACHE_TIER_TEMPLATE,
        Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, hclString(v)])),
      );
      expect(ours).toBe(theirs);
      expect(ours).toContain('proxy_pass http://lazysnap_origin;');
      expect(ours).toContain('server 127.0.0.1:8081;');
      expect(ours).not.toMatch(/\$\{/);
      // The renderer refuses what it does not implement instead of passing it through.
      expect(() => renderTemplate('%{ if x }a%{ endif }', {})).toThrow(/not supported/);
      expect(() => renderTemplate('${upper(x)}', { x: 'a' })).toThrow(/not supported/);
      expect(() => renderTemplate('${x}', {})).toThrow(/no value/);
      expect(renderTemplate('$${x} %%{y} $uri', {})).toBe(
        templatefile(writeTemp(tmp.dir, 'esc.tftpl', '$${x} %%{y} $uri'), {}),
      );
    },
  );

  it.skipIf(!!terraformSkipReason)(
    'the restore host user data, as the module renders it, installs and enables the systemd unit',
    () => {
      const script = evalModuleLocal(moduleDir('restore-fleet'), 'user_data', {
        vars: FLEET_VARS,
        stubs: FLEET_STUBS,
      });
      const unit = readFileSync(UNIT, 'utf8');
      expect(heredoc(script, '/etc/systemd/system/lazysnap@.service')).toBe(unit);
      expect(script).toContain(readFileSync(path.join(INFRA, 'bootstrap', 'install-node.sh'), 'utf8'));
      expect(script).toContain(
        "npm install --global --prefix /opt/lazysnap --no-fund --no-audit 'https://artifacts.example.com/lazysnap-0.1.0.tgz'",
      );
      // One instance per snapshot, each with its own metrics port.
      expect(script).toContain(
        "printf 'LAZYSNAP_METRICS_PORT=%s\\n' '9464' > '/etc/lazysnap/fn-1.env'\nsystemctl enable --now 'lazysnap@fn-1.service'",
      );
      expect(script).toContain(
        "printf 'LAZYSNAP_METRICS_PORT=%s\\n' '9465' > '/etc/lazysnap/web.v2.env'\nsystemctl enable --now 'lazysnap@web.v2.service'",
      );
      // The environment the unit reads, and the argv systemd makes of it: only flags serve has.
      const env = parseEnvFile(heredoc(script, '/etc/lazysnap/serve.env'));
      expect(env).toMatchObject({
        LAZYSNAP_STORES: '--store http://cache.internal/prod --store s3://snaps/prod',
        AWS_REGION: 'eu-west-1',
        LAZYSNAP_LOG_LEVEL: 'info',
      });
      const argv = expandExecStart(
        parseUnit(unit).get('ExecStart')![0]!,
        { ...env, LAZYSNAP_METRICS_PORT: '9464' },
        { i: 'fn-1', t: '/run', C: '/var/cache' },
      );
      expect(argv.slice(0, 6)).toEqual([
        '/opt/lazysnap/bin/lazysnap',
        'serve',
        '--store',
        'http://cache.internal/prod',
        '--store',
        's3://snaps/prod',
      ]);
      const flags = new Set(serveUsage.match(/--[a-z0-9-]+/g));
      for (const a of argv.filter((x) => x.startsWith('--')))
        expect(flags.has(a), `serve has no ${a}`).toBe(true);
      expect(argv.join(' ')).toContain(
        '--socket /run/lazysnap/fn-1/uffd.sock --cache-dir /var/cache/lazysnap --metrics-host 0.0.0.0 --metrics-port 9464 --fd-store --cache-budget 128GiB --memory-budget 1GiB --prefetch replay',
      );
      const cw = JSON.parse(heredoc(script, '/opt/aws/amazon-cloudwatch-agent/etc/lazysnap.json')) as Hcl;
      expect(cw.logs.logs_collected.files.collect_list[0]).toMatchObject({
        file_path: '/var/log/lazysnap/*.log',
        log_group_name: '/lazysnap/test',
      });
      expectValidUserData(tmp.dir, script);
    },
  );

  it.skipIf(!!terraformSkipReason)(
    'the cache tier user data, as the module renders it, writes the nginx config, the origin script and its unit',
    () => {
      const dir = moduleDir('cache-tier');
      const vars = {
        name: 'test',
        vpc_id: 'vpc-1',
        subnet_ids: ['subnet-1'],
        client_cidr_blocks: ['10.0.0.0/16'],
        bucket_name: 'snaps',
        instance_profile_name: 'p',
        cache_size_gb: 100,
      };
      const stubs = {
        'data.aws_region.current.id': '"eu-west-1"',
        'aws_lb.this.dns_name': '"cache.internal"',
      };
      const script = evalModuleLocal(dir, 'user_data', { vars, stubs });
      const conf = heredoc(script, '/etc/nginx/nginx.conf');
      expect(conf).toBe(
        renderTemplate(readFileSync(CACHE_TIER_TEMPLATE, 'utf8'), {
          user: 'nginx',
          worker_processes: 'auto',
          run_dir: '/run',
          log_dir: '/var/log/nginx',
          cache_dir: '/var/cache/lazysnap',
          listen: '80',
          origin: '127.0.0.1:8081',
          cache_max_size: '100g',
          keys_zone_size: '52m',
        }),
      );
      expect(heredoc(script, '/opt/lazysnap-s3-origin/s3-origin.mjs')).toBe(
        readFileSync(ORIGIN_SCRIPT, 'utf8'),
      );
      expect(heredoc(script, '/etc/systemd/system/lazysnap-s3-origin.service')).toBe(
        readFileSync(ORIGIN_UNIT, 'utf8'),
      );
      expect(parseEnvFile(heredoc(script, '/etc/lazysnap-s3-origin.env'))).toEqual({
        S3_ORIGIN_BUCKET: 'snaps',
        S3_ORIGIN_LISTEN: '127.0.0.1:8081',
        AWS_REGION: 'eu-west-1',
      });
      expect(evalModuleLocal(dir, 'url', { vars, stubs })).toBe('http://cache.internal');
      expectValidUserData(tmp.dir, script);
    },
  );
});

function writeTemp(dir: string, name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** bash parses it, nothing embedded ends a heredoc early, and it fits EC2's 16 KiB once gzipped. */
function expectValidUserData(dir: string, script: string): void {
  const file = writeTemp(dir, 'user-data.sh', script);
  expect(spawnSync('bash', ['-n', file], { encoding: 'utf8' }).stderr).toBe('');
  const opened = script.match(/<<'LAZYSNAP_EOF'\n/g)?.length ?? 0;
  expect(script.match(/\nLAZYSNAP_EOF\n/g)?.length).toBe(opened);
  expect(gzipSync(script).length).toBeLessThan(16 * 1024);
}

// ---- systemd -----------------------------------------------------------------------------------

const systemdAnalyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
const systemdSkip = systemdAnalyze ? '' : 'systemd-analyze is not installed';

describe('the systemd units', () => {
  it('lazysnap@.service holds only what serve needs: CAP_KILL, /dev/userfaultfd, its socket directory 0700', () => {
    const u = parseUnit(readFileSync(UNIT, 'utf8'));
    const one = (k: string) => u.get(k)?.join(' ');
    expect(one('CapabilityBoundingSet')).toBe('CAP_KILL');
    expect(one('AmbientCapabilities')).toBe('CAP_KILL');
    expect(one('NoNewPrivileges')).toBe('yes');
    expect(one('ProtectSystem')).toBe('strict');
    expect(one('DevicePolicy')).toBe('closed');
    expect(one('DeviceAllow')).toBe('/dev/userfaultfd rw');
    expect(one('RuntimeDirectory')).toBe('lazysnap/%i');
    expect(one('RuntimeDirectoryMode')).toBe('0700');
    expect(u.get('SystemCallFilter')).toEqual(['@system-service', '~@privileged']);
    expect(one('RestrictAddressFamilies')).toBe('AF_UNIX AF_INET AF_INET6');
    expect(one('User')).toBe('lazysnap');
    // Settings that would break serve: a user namespace (CAP_KILL stops reaching peers), private
    // devices (no /dev/userfaultfd), W^X memory (V8's JIT).
    for (const k of ['PrivateUsers', 'PrivateDevices', 'MemoryDenyWriteExecute', 'DynamicUser'])
      expect(u.get(k), k).toBeUndefined();
    expect(one('ExecStart')).toContain('--socket %t/lazysnap/%i/uffd.sock');
    // The stop timeout leaves serve's default 30 s shutdown grace to drain sessions.
    expect(Number(one('TimeoutStopSec')!.replace(/s$/, ''))).toBeGreaterThan(30);
    // Sessions outlive serve itself (issue 13): it notifies, and keeps their descriptors in the unit's
    // store (4 a session), from which the instance Restart= starts adopts them.
    expect(one('Type')).toBe('notify');
    expect(one('ExecStart')).toMatch(/ --fd-store( |$)/);
    expect(Number(one('FileDescriptorStoreMax'))).toBeGreaterThanOrEqual(4 * 1000 + 1);
    expect(one('Restart')).toBe('on-failure');
    expect(one('KillMode')).toBe('mixed');
  });

  it.skipIf(!!systemdSkip)(
    skipName('systemd-analyze verifies both units and rates their exposure 2.0 or less', systemdSkip),
    () => {
      const root = tempDir('lazysnap-systemd-');
      try {
        // A root with the system's units (for the targets the units order against) and stand-ins for
        // the binaries the ExecStart lines name. (--threshold counts tenths: 20 is an exposure of 2.0.)
        cpSync('/usr/lib/systemd/system', path.join(root.dir, 'usr/lib/systemd/system'), { recursive: true });
        for (const bin of ['opt/lazysnap/bin/lazysnap', 'opt/node/bin/node']) {
          mkdirSync(path.dirname(path.join(root.dir, bin)), { recursive: true });
          writeFileSync(path.join(root.dir, bin), '#!/bin/sh\n', { mode: 0o755 });
        }
        const units = path.join(root.dir, 'etc/systemd/system');
        mkdirSync(units, { recursive: true });
        cpSync(UNIT, path.join(units, 'lazysnap@.service'));
        cpSync(ORIGIN_UNIT, path.join(units, 'lazysnap-s3-origin.service'));
        for (const name of ['lazysnap@fn-1.service', 'lazysnap-s3-origin.service']) {
          const r = spawnSync(systemdAnalyze!, ['verify', `--root=${root.dir}`, name], { encoding: 'utf8' });
          expect({ name, status: r.status, out: (r.stdout + r.stderr).trim() }).toEqual({
            name,
            status: 0,
            out: '',
          });
        }
        for (const [file, as] of [
          [UNIT, 'lazysnap@fn-1.service'],
          [ORIGIN_UNIT, 'lazysnap-s3-origin.service'],
        ] as const) {
          const copy = writeTemp(root.dir, as, readFileSync(file, 'utf8'));
          const r = spawnSync(
            systemdAnalyze!,
            ['security', '--offline=yes', '--threshold=20', '--no-pager', copy],
            { encoding: 'utf8' },
          );
          const level = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout)?.[1];
          expect({ as, status: r.status, level: Number(level) <= 2 }).toEqual({ as, status: 0, level: true });
        }
      } finally {
        root.cleanup();
      }
    },
  );
});

// ---- the cache tier, running ------------------------------------------------------------------

describe.skipIf(!!nginxSkipReason)(
  skipName('the cache tier (nginx.conf.tftpl) in front of an origin', nginxSkipReason),
  () => {
    let nginx: NginxServer;
    let root: ReturnType<typeof tempDir>;
    beforeAll(async () => {
      root = tempDir('lazysnap-tier-');
      nginx = await startNginx(root.dir);
    });
    afterAll(async () => {
      await nginx?.stop();
      root?.cleanup();
    });
    const put = (key: string, body: Buffer | string) => {
      mkdirSync(path.dirname(path.join(root.dir, key)), { recursive: true });
      writeFileSync(path.join(root.dir, key), body);
    };
    const tierLog = (prefix: string, n: number) => logLines(nginx.accessLog, 4, prefix, n);
    const originLog = (prefix: string, n: number) => logLines(nginx.originAccessLog, 3, prefix, n);

    it('serves a second read of a chunk from its cache: HIT in its log, one request at the origin', async () => {
      const body = Buffer.alloc(200_000, 7);
      put('a/chunks/ab/c1', body);
      const store = new HttpStore(`${nginx.url}/a`);
      try {
        expect((await store.get('chunks/ab/c1', { maxBytes: body.length })).equals(body)).toBe(true);
        expect((await store.get('chunks/ab/c1')).equals(body)).toBe(true);
        expect(await store.has('chunks/ab/c1')).toBe(true);
        const tier = await tierLog('/a/', 3);
        expect(tier.map((f) => [f[2], f[3], f[7]])).toEqual([
          ['200', 'GET', 'MISS'],
          ['200', 'GET', 'HIT'],
          ['200', 'HEAD', 'HIT'],
        ]);
        // The origin saw one GET: the second read and the HEAD were answered from the cache.
        const origin = await originLog('/a/', 1);
        expect(origin.map((f) => [f[1], f[2], f[3], f[4]])).toEqual([
          ['200', 'GET', '/a/chunks/ab/c1', '"-"'],
        ]);
      } finally {
        await store.close();
      }
    });

    it('never caches a miss (a manifest appears last) nor a profile (rewritten by every recording)', async () => {
      const store = new HttpStore(`${nginx.url}/b`);
      try {
        await expect(store.get('manifests/s.json')).rejects.toBeInstanceOf(NotFoundError);
        put('b/manifests/s.json', '{"format":"lazysnap/1"}');
        expect((await store.get('manifests/s.json')).toString()).toBe('{"format":"lazysnap/1"}');
        put('b/profiles/s', 'one');
        expect((await store.get('profiles/s')).toString()).toBe('one');
        put('b/profiles/s', 'two');
        expect((await store.get('profiles/s')).toString()).toBe('two');
        const tier = await tierLog('/b/', 4);
        expect(tier.map((f) => [f[2], f[4], f[7]])).toEqual([
          ['404', '/b/manifests/s.json', 'MISS'],
          ['200', '/b/manifests/s.json', 'MISS'],
          ['200', '/b/profiles/s', '-'],
          ['200', '/b/profiles/s', '-'],
        ]);
      } finally {
        await store.close();
      }
    });

    it('forwards only GET and HEAD of store keys; answers its health check itself', async () => {
      put('c/chunks/ab/x', 'x');
      put('c/other/x', 'x');
      expect((await fetch(`${nginx.url}/c/chunks/ab/x`, { method: 'PUT', body: 'y' })).status).toBe(403);
      expect((await fetch(`${nginx.url}/c/chunks/ab/x`, { method: 'DELETE' })).status).toBe(403);
      expect((await fetch(`${nginx.url}/c/other/x`)).status).toBe(404);
      const health = await fetch(`${nginx.url}/healthz`);
      expect([health.status, await health.text()]).toEqual([200, 'ok\n']);
      await tierLog('/c/', 3);
      expect(await originLog('/c/', 0)).toEqual([]);
    });
  },
);

// ---- the signing S3 origin, and a restore host configured by Terraform ----------------------------

interface S3Origin {
  port: number;
  stop(): Promise<void>;
}

async function startS3Origin(s3: S3rverHandle): Promise<S3Origin> {
  const child: ChildProcess = spawn(process.execPath, [ORIGIN_SCRIPT], {
    env: {
      PATH: process.env.PATH,
      S3_ORIGIN_BUCKET: s3.bucket,
      S3_ORIGIN_LISTEN: '127.0.0.1:0',
      AWS_ENDPOINT_URL_S3: s3.endpoint,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  const exited = once(child, 'exit');
  const [line] = (await Promise.race([
    once(child.stdout!.setEncoding('utf8'), 'data'),
    exited.then(() => ['exited']),
  ])) as [string];
  const port = (JSON.parse(line.startsWith('{') ? line : '{}') as { port?: number }).port;
  const stop = async () => {
    process.off('exit', onExit);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  };
  if (!port) {
    await stop();
    throw new Error(`s3-origin.mjs did not start: ${line}`);
  }
  return { port, stop };
}

function rawRequest(
  port: number,
  method: string,
  reqPath: string,
  headers: http.OutgoingHttpHeaders = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: reqPath, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject).end();
  });
}

describe.skipIf(!!nginxSkipReason)(
  skipName('the cache tier over its signing S3 origin (s3-origin.mjs) and s3rver', nginxSkipReason),
  () => {
    let s3: S3rverHandle;
    let origin: S3Origin;
    let tier: Awaited<ReturnType<typeof startCacheTier>>;
    let tmp: ReturnType<typeof tempDir>;
    let restoreEnv = () => {};
    beforeAll(async () => {
      tmp = tempDir('lazysnap-tier-s3-');
      s3 = await startS3rver('snaps');
      origin = await startS3Origin(s3);
      tier = await startCacheTier(`127.0.0.1:${origin.port}`);
      // For the s3:// store serve falls back to (the SDK's chain reads the environment).
      restoreEnv = useS3rverEnv();
    });
    afterAll(async () => {
      restoreEnv();
      await tier?.stop();
      await origin?.stop();
      await s3?.stop();
      tmp?.cleanup();
    });

    it('reads objects through nginx and the signed origin; a miss is a 404; a repeat never reaches S3', async () => {
      const s3store = new S3Store({ bucket: 'snaps', prefix: 'p1', endpoint: s3.endpoint });
      const store = new HttpStore(`${tier.url}/p1`);
      try {
        const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
        await s3store.put('chunks/ab/obj', body);
        s3.reset();
        expect((await store.get('chunks/ab/obj', { maxBytes: body.length })).equals(body)).toBe(true);
        expect((await store.get('chunks/ab/obj')).equals(body)).toBe(true);
        expect(await store.has('chunks/ab/obj')).toBe(true);
        await expect(store.get('manifests/none.json')).rejects.toBeInstanceOf(NotFoundError);
        expect(await store.has('chunks/ab/none')).toBe(false);
        expect(
          s3.requests.filter((r) => r.path.startsWith('/snaps/p1/chunks/ab/obj')).map((r) => r.method),
        ).toEqual(['GET']);
        expect((await logLines(tier.accessLog, 4, '/p1/', 5)).map((f) => f[7])).toEqual([
          'MISS',
          'HIT',
          'HIT',
          'MISS',
          'MISS',
        ]);
      } finally {
        await store.close();
        await s3store.close();
      }
    });

    it('answers only GET and HEAD of plain keys, and conditional GETs with 304 (revalidation)', async () => {
      const s3store = new S3Store({ bucket: 'snaps', prefix: 'p2', endpoint: s3.endpoint });
      try {
        await s3store.put('manifests/m.json', Buffer.from('{}'));
        const head = await rawRequest(origin.port, 'HEAD', '/p2/manifests/m.json');
        expect(head).toMatchObject({
          status: 200,
          headers: { 'content-length': '2', 'content-type': 'application/json' },
        });
        const etag = head.headers.etag!;
        expect(
          await rawRequest(origin.port, 'GET', '/p2/manifests/m.json', { 'if-none-match': etag }),
        ).toMatchObject({ status: 304, body: '' });
        expect(await rawRequest(origin.port, 'GET', '/p2/manifests/m.json')).toMatchObject({
          status: 200,
          body: '{}',
        });
        expect((await rawRequest(origin.port, 'POST', '/p2/manifests/m.json')).status).toBe(405);
        expect((await rawRequest(origin.port, 'GET', '/p2/x/../manifests/m.json')).status).toBe(400);
        expect((await rawRequest(origin.port, 'GET', '/')).status).toBe(400);
      } finally {
        await s3store.close();
      }
    });

    it.skipIf(!hasUffd || !!terraformSkipReason)(
      skipName(
        'a restore host as Terraform configures it (user data, unit, environment) restores through the tier',
        uffdSkipReason || terraformSkipReason,
      ),
      async () => {
        const CS = 512 * 1024;
        const img = makeImage(tmp.dir, 8 * CS * 4, CS, { zeroEvery: 3 });
        const src = await openMemoryFile(img.path);
        const s3store = new S3Store({ bucket: 'snaps', prefix: 'prod', endpoint: s3.endpoint });
        await createSnapshot({ source: src, store: s3store, id: 'fn-1', chunkSize: CS });
        await src.close();
        await s3store.close();

        // What Terraform writes on a host, with this machine's tier and S3 as the stores.
        const metricsPort = await freePort();
        const vars = {
          ...FLEET_VARS,
          store_urls: [`${tier.url}/prod`, 's3://snaps/prod'],
          snapshot_ids: ['fn-1'],
          metrics_port: metricsPort,
          extra_serve_args: ['--s3-endpoint', s3.endpoint],
        };
        const script = evalModuleLocal(moduleDir('restore-fleet'), 'user_data', { vars, stubs: FLEET_STUBS });
        const env = {
          ...parseEnvFile(heredoc(script, '/etc/lazysnap/serve.env')),
          LAZYSNAP_METRICS_PORT: /LAZYSNAP_METRICS_PORT=%s\\n' '(\d+)' > '\/etc\/lazysnap\/fn-1\.env'/.exec(
            script,
          )![1]!,
        };
        const unit = parseUnit(heredoc(script, '/etc/systemd/system/lazysnap@.service'));
        const argv = expandExecStart(unit.get('ExecStart')![0]!, env, {
          i: 'fn-1',
          t: path.join(tmp.dir, 'run'),
          C: path.join(tmp.dir, 'cache'),
        });
        expect(argv.slice(0, 2)).toEqual(['/opt/lazysnap/bin/lazysnap', 'serve']);

        // The unit's command line and environment, with this checkout's CLI in place of /opt/lazysnap.
        const child = spawn(process.execPath, ['--import', 'tsx', 'cli/bin.ts', ...argv.slice(1)], {
          cwd: repoRoot,
          env: {
            PATH: process.env.PATH,
            ...env,
            AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
            AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
            AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
          },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        const exited = once(child, 'exit');
        let err = '';
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        try {
          const sock = path.join(tmp.dir, 'run', 'lazysnap', 'fn-1', 'uffd.sock');
          for (let i = 0; i < 500 && !err.includes('serving fn-1 on') && child.exitCode === null; i++)
            await new Promise((r) => setTimeout(r, 20));
          expect(err).toContain(`serving fn-1 on ${sock}, metrics on :${metricsPort}`);
          const r = await runClient(['--socket', sock, '--image', img.path, '--threads', '2']);
          expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
          // Every stored chunk came through the cache tier (origin0), none from S3 directly.
          const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
          expect(metrics).toMatch(/lazysnap_fetches_total\{tier="origin0",priority="demand"\} [1-9]/);
          expect(metrics).not.toMatch(/tier="origin1"/);
          const chunkLines = await logLines(tier.accessLog, 4, '/prod/chunks/', 1);
          expect(chunkLines.length).toBeGreaterThan(0);
        } finally {
          child.kill('SIGTERM');
          await exited;
        }
        expect(child.exitCode).toBe(0);
      },
    );
  },
);
