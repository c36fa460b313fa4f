/**
 * The deployment files (deploy/kubernetes, deploy/fluid) are checked as Kubernetes would
 * take them: every kustomization (base and overlays) is rendered here the way kustomize
 * does for what they use (resources, namespace, strategic-merge patches; kustomize is not
 * installed), every object is validated against the Kubernetes API schema
 * (kubernetes-models), and every flag in a cachefs container's args must exist in
 * `cachefs <command> --help` — a manifest cannot name a flag the binary lacks. The
 * security shape of docs/security.md is asserted: secrets as files of mode 0440 read
 * through fsGroup, every cluster process given --auth-token-file, FUSE containers
 * privileged with Bidirectional propagation and applications with HostToContainer.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Namespace, Secret, Service } from 'kubernetes-models/v1';
import { DaemonSet, Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { parseAllDocuments, parse } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { cachefs } from './support/cachefs.js';
import { FLUID_RUNTIME_OPTIONS } from '../src/cli/fluid-config.js';
import { UFS_OPTION_KEYS } from '../src/ufs/option-keys.js';
import { parseUfsUri } from '../src/ufs/uri.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const K8S = path.join(ROOT, 'deploy/kubernetes');
const FLUID = path.join(ROOT, 'deploy/fluid');
const KUSTOMIZATIONS = ['base', 'overlays/fuse-daemonset', 'overlays/hostnetwork', 'overlays/sidecar', 'overlays/no-sharing', 'overlays/dataload'];

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

interface K8sObject extends Obj {
  apiVersion: string;
  kind: string;
  metadata: Obj & { name: string; namespace?: string };
}

interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  securityContext?: { privileged?: boolean };
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string }[];
  readinessProbe?: { httpGet?: { path: string } };
  livenessProbe?: { httpGet?: { path: string } };
}

interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  securityContext?: { fsGroup?: number };
  volumes?: { name: string; secret?: { defaultMode?: number }; hostPath?: { path: string }; emptyDir?: Obj }[];
}

interface PodTemplate {
  metadata?: { annotations?: Record<string, string> };
  spec: PodSpec;
}

const isObj = (v: Json | undefined): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Kustomize's strategic merge for the fields these manifests patch: maps merge key by
 * key, lists of named items (containers, volumes, env, ports) merge by name, other lists
 * and scalars are replaced.
 */
function strategicMerge(base: Json, patch: Json): Json {
  if (isObj(base) && isObj(patch)) {
    const out: Obj = { ...base };
    for (const [k, v] of Object.entries(patch)) out[k] = k in base ? strategicMerge(base[k]!, v) : v;
    return out;
  }
  if (Array.isArray(base) && Array.isArray(patch) && [...base, ...patch].every((e) => isObj(e) && typeof e.name === 'string')) {
    const out = base.map((e) => {
      const p = patch.find((q) => isObj(q) && isObj(e) && q.name === e.name);
      return p === undefined ? e : strategicMerge(e, p);
    });
    for (const p of patch) if (!base.some((e) => isObj(e) && isObj(p) && e.name === p.name)) out.push(p);
    return out;
  }
  return patch;
}

/**
 * YAML 1.1, as kubectl and kustomize read it (go-yaml): `defaultMode: 0440` is octal there;
 * YAML 1.2 would read decimal 440 (0o670, which cachefs refuses as readable by "other").
 */
async function yamlDocs(file: string): Promise<K8sObject[]> {
  const docs = parseAllDocuments(await readFile(file, 'utf8'), { version: '1.1' });
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0]!.message}`);
  return docs.map((d) => d.toJS() as K8sObject).filter((o) => o !== null);
}

/** What `kustomize build DIR` gives for the features used here; `files` collects every file read. */
async function render(dir: string, files: Set<string>): Promise<K8sObject[]> {
  const kfile = path.join(dir, 'kustomization.yaml');
  files.add(kfile);
  const k = parse(await readFile(kfile, 'utf8'), { version: '1.1' }) as { namespace?: string; resources?: string[]; patches?: { path: string }[] };
  const known = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'patches']);
  for (const key of Object.keys(k)) if (!known.has(key)) throw new Error(`${kfile}: '${key}' is not rendered by this test`);
  let objects: K8sObject[] = [];
  for (const r of k.resources ?? []) {
    const p = path.resolve(dir, r);
    objects.push(...((await stat(p)).isDirectory() ? await render(p, files) : (files.add(p), await yamlDocs(p))));
  }
  for (const { path: pf } of k.patches ?? []) {
    const file = path.resolve(dir, pf);
    files.add(file);
    for (const patch of await yamlDocs(file)) {
      const i = objects.findIndex((o) => o.kind === patch.kind && o.metadata.name === patch.metadata.name);
      if (i < 0) throw new Error(`${file}: patches ${patch.kind}/${patch.metadata.name}, which ${dir} does not have`);
      objects[i] = strategicMerge(objects[i]!, patch) as K8sObject;
    }
  }
  if (k.namespace !== undefined) {
    const ns = k.namespace;
    objects = objects.map((o) => (o.kind === 'Namespace' ? o : { ...o, metadata: { ...o.metadata, namespace: ns } }));
  }
  return objects;
}

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/StatefulSet': StatefulSet,
  'apps/v1/DaemonSet': DaemonSet,
  'apps/v1/Deployment': Deployment,
  'batch/v1/Job': Job,
};

function podTemplate(o: K8sObject): PodTemplate | undefined {
  const spec = o.spec;
  return isObj(spec) && isObj(spec.template) ? (spec.template as unknown as PodTemplate) : undefined;
}

function allContainers(t: PodTemplate): Container[] {
  return [...(t.spec.initContainers ?? []), ...t.spec.containers];
}

/** The cachefs command line of a container: its argv after `cachefs`, or undefined for others. */
function cachefsArgv(c: Container): string[] | undefined {
  if (c.image?.startsWith('cachefs') !== true) return undefined;
  const cmd = c.command ?? [];
  const at = cmd.indexOf('cachefs');
  if (cmd.length > 0 && at < 0) return undefined; // a shell step in the image (e.g. mkdir)
  return [...(at >= 0 ? cmd.slice(at + 1) : []), ...(c.args ?? [])];
}

/** The subcommand (`mount`, `mount-table add`, ...) and the flags given. */
function commandAndFlags(argv: string[]): { command: string[]; flags: string[] } {
  const command = argv[0] === 'mount-table' ? argv.slice(0, 2) : argv.slice(0, 1);
  const flags = argv.filter((a) => a.startsWith('-')).map((a) => a.split('=')[0]!);
  return { command, flags };
}

const helpCache = new Map<string, Set<string>>();
async function flagsOf(command: string[]): Promise<Set<string>> {
  const key = command.join(' ');
  let flags = helpCache.get(key);
  if (flags === undefined) {
    const r = await cachefs([...command, '--help']);
    expect(r.code, `cachefs ${key} --help: ${r.stderr}`).toBe(0);
    flags = new Set([...r.stdout.matchAll(/(?:^|[\s,])(--?[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!));
    helpCache.set(key, flags);
  }
  return flags;
}

const rendered = new Map<string, K8sObject[]>();

interface Placed {
  /** Which kustomization, which object, for messages. */
  where: string;
  template: PodTemplate;
  container: Container;
  /** Its cachefs argv, undefined when it does not run cachefs. */
  argv: string[] | undefined;
}

/** Every container of every pod template of every rendered kustomization. */
function* containers(): Generator<Placed> {
  for (const [k, objects] of rendered) {
    for (const o of objects) {
      const template = podTemplate(o);
      if (template === undefined) continue;
      for (const container of allContainers(template)) {
        yield { where: `${k}: ${o.kind}/${o.metadata.name} ${container.name}`, template, container, argv: cachefsArgv(container) };
      }
    }
  }
}
const filesRead = new Set<string>();

beforeAll(async () => {
  for (const k of KUSTOMIZATIONS) rendered.set(k, await render(path.join(K8S, k), filesRead));
});

describe('kubernetes manifests', () => {
  it('every YAML file under deploy/kubernetes belongs to a kustomization', async () => {
    const all = (await readdir(K8S, { recursive: true })).filter((f) => f.endsWith('.yaml')).map((f) => path.join(K8S, f));
    expect(all.filter((f) => !filesRead.has(f))).toEqual([]);
  });

  it('every object of every kustomization validates against the Kubernetes API schema', () => {
    let count = 0;
    for (const [k, objects] of rendered) {
      expect(objects.length, k).toBeGreaterThan(0);
      const names = objects.map((o) => `${o.kind}/${o.metadata.name}`);
      expect(new Set(names).size, `${k}: duplicate objects ${names.join(', ')}`).toBe(names.length);
      for (const o of objects) {
        const Model = MODELS[`${o.apiVersion}/${o.kind}`];
        expect(Model, `${k}: ${o.apiVersion} ${o.kind} has no schema here`).toBeDefined();
        expect(() => new Model!(o as never).validate(), `${k}: ${o.kind}/${o.metadata.name}`).not.toThrow();
        if (o.kind !== 'Namespace') expect(o.metadata.namespace, `${k}: ${o.kind}/${o.metadata.name}`).toBe('cachefs');
        count++;
      }
    }
    expect(count).toBeGreaterThan(20);
  });

  it('the hostnetwork overlay puts the workers, and only them, on the host network', () => {
    const worker = rendered.get('overlays/hostnetwork')!.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'cachefs-worker')!;
    const spec = podTemplate(worker)!.spec as PodSpec & { hostNetwork?: boolean; dnsPolicy?: string };
    expect(spec.hostNetwork).toBe(true);
    expect(spec.dnsPolicy).toBe('ClusterFirstWithHostNet');
    expect(spec.containers[0]!.args).toContain('--tier=MEM:/cache/mem:2GiB'); // the patch kept the container
    const fuse = rendered.get('overlays/hostnetwork')!.find((o) => o.metadata.name === 'cachefs-fuse')!;
    expect((podTemplate(fuse)!.spec as { hostNetwork?: boolean }).hostNetwork).toBeUndefined();
  });

  it('the dataload overlay runs `cachefs load` of a namespace path against the master as a Job, unprivileged', () => {
    const job = rendered.get('overlays/dataload')!.find((o) => o.kind === 'Job' && o.metadata.name === 'cachefs-dataload')!;
    const template = podTemplate(job)!;
    const [c] = template.spec.containers;
    const argv = cachefsArgv(c!)!;
    expect(argv.slice(0, 2)).toEqual(['load', '/data/train']);
    expect(argv).toContain('--master=cachefs-master:19998');
    expect(argv.some((a) => /^--threads=\d+$/.test(a))).toBe(true);
    expect(c!.securityContext?.privileged).toBeUndefined();
    expect((template.spec as { restartPolicy?: string }).restartPolicy).toBe('OnFailure');
    // The path it loads is one the base's mount table declares.
    const table = rendered.get('overlays/dataload')!.find((o) => o.metadata.name === 'cachefs-mount-table')!;
    const tableArgv = cachefsArgv(podTemplate(table)!.spec.containers[0]!)!;
    expect(argv[1]!.startsWith(`${tableArgv[2]}/`)).toBe(true);
  });

  it('every flag in a cachefs container exists in `cachefs <command> --help`', async () => {
    let checked = 0;
    for (const { where, argv } of containers()) {
      if (argv === undefined) continue;
      const { command, flags } = commandAndFlags(argv);
      const known = await flagsOf(command);
      for (const f of flags) expect(known.has(f), `${where}: cachefs ${command.join(' ')} has no ${f}`).toBe(true);
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(10);
  });

  it('the flag check catches a flag the binary lacks', async () => {
    const { command, flags } = commandAndFlags(['mount', '/mnt', '--foreground', '--no-such-flag=1']);
    const known = await flagsOf(command);
    expect(flags.filter((f) => !known.has(f))).toEqual(['--no-such-flag']);
  });

  it('secrets are files of mode 0440 read through fsGroup; every cluster process has --auth-token-file', () => {
    for (const { where, template, container, argv } of containers()) {
      const secrets = (template.spec.volumes ?? []).filter((v) => v.secret !== undefined);
      for (const v of secrets) expect(v.secret!.defaultMode, `${where} volume ${v.name}`).toBe(0o440);
      if (secrets.length > 0) expect(template.spec.securityContext?.fsGroup, where).toBe(2000);
      if (argv === undefined || argv.length === 0) continue;
      const token = argv.find((a) => a.startsWith('--auth-token-file='));
      expect(token, where).toBeDefined();
      const file = token!.slice('--auth-token-file='.length);
      const mount = (container.volumeMounts ?? []).find((m) => file.startsWith(`${m.mountPath}/`));
      expect(secrets.map((v) => v.name), `${where}: ${file} is not on a secret volume`).toContain(mount?.name);
      expect(argv, where).not.toContain('--insecure');
    }
  });

  it('mounts are privileged with Bidirectional propagation; applications read with HostToContainer', () => {
    let mounts = 0;
    let apps = 0;
    for (const { where, container: c, argv } of containers()) {
      const propagations = (c.volumeMounts ?? []).map((m) => m.mountPropagation).filter((p) => p !== undefined);
      if (argv?.[0] === 'mount') {
        expect(c.securityContext?.privileged, where).toBe(true);
        expect(propagations, where).toEqual(['Bidirectional']);
        const at = (c.volumeMounts ?? []).find((m) => m.mountPropagation === 'Bidirectional')!;
        expect(argv[1] === at.mountPath || argv[1]!.startsWith(`${at.mountPath}/`), `${where}: ${argv[1]} under ${at.mountPath}`).toBe(true);
        expect(argv, where).toContain('--foreground');
        mounts++;
      } else if (argv === undefined && propagations.length > 0) {
        expect(propagations, where).toEqual(['HostToContainer']);
        expect(c.securityContext?.privileged, where).toBeUndefined();
        apps++;
      }
    }
    expect(mounts).toBeGreaterThanOrEqual(3);
    expect(apps).toBeGreaterThanOrEqual(3);
  });

  it("workers' socket group is the applications' fsGroup; probes use only endpoints the process serves", () => {
    for (const { where, template: t, container: c, argv } of containers()) {
      if (argv?.[0] === 'worker') expect(argv, where).toContain(`--domain-socket-group=${t.spec.securityContext?.fsGroup}`);
      // /readyz: only the master has it (src/master/server.ts); workers serve /healthz on
      // their block port, mounts on --metrics-port.
      if (c.readinessProbe?.httpGet !== undefined && argv?.[0] !== 'master') expect(c.readinessProbe.httpGet.path, where).toBe('/healthz');
      if (c.livenessProbe?.httpGet !== undefined) expect(c.livenessProbe.httpGet.path, where).toBe('/healthz');
      if (argv?.[0] === 'mount' && c.livenessProbe?.httpGet !== undefined) expect(argv.some((a) => a.startsWith('--metrics-port=')), where).toBe(true);
      if (argv?.[0] === 'master') expect(c.readinessProbe?.httpGet?.path, where).toBe('/readyz');
      if (argv !== undefined && ['master', 'worker'].includes(argv[0]!)) expect(t.metadata?.annotations?.['prometheus.io/scrape'], where).toBe('true');
    }
  });
});

describe('fluid', () => {
  it('profile, dataset and runtime are shaped as Fluid documents them, the profile runs cachefs mount --fluid-config', async () => {
    const docs = new Map<string, K8sObject>();
    for (const f of await readdir(FLUID)) for (const o of await yamlDocs(path.join(FLUID, f))) docs.set(o.kind, o);
    expect([...docs.keys()].sort()).toEqual(['Dataset', 'ThinRuntime', 'ThinRuntimeProfile']);
    for (const o of docs.values()) expect(o.apiVersion).toBe('data.fluid.io/v1alpha1');

    const profile = docs.get('ThinRuntimeProfile')! as K8sObject & { spec: { fileSystemType: string; fuse: { command: string[] } } };
    expect(profile.spec.fileSystemType).toBe('fuse.cachefs'); // the type src/fuse/session.ts mounts
    const argv = cachefsArgv({ name: 'fuse', image: 'cachefs', command: profile.spec.fuse.command })!;
    expect(argv).toEqual(['mount', '--fluid-config', '/etc/fluid/config/config.json', '--foreground']);
    const { command, flags } = commandAndFlags(argv);
    const known = await flagsOf(command);
    const missing = flags.filter((f) => !known.has(f));
    expect(missing).toEqual([]);

    const dataset = docs.get('Dataset')! as K8sObject & {
      spec: { mounts: { name: string; mountPoint: string; options?: Record<string, string>; encryptOptions?: { name: string; valueFrom: { secretKeyRef: { name: string; key: string } } }[] }[] };
    };
    const names = dataset.spec.mounts.map((m) => m.name);
    expect(new Set(names).size).toBe(names.length); // each becomes <targetPath>/<name>
    for (const m of dataset.spec.mounts) {
      expect(m.mountPoint).toMatch(/^(s3|oss|cosn|file):\/\//);
      for (const e of m.encryptOptions ?? []) expect(e.valueFrom.secretKeyRef.name).toBe('cachefs-ufs');
      // Every option, plain or encrypted, is a key the source's backend reads (--fluid-config refuses others).
      const keys = UFS_OPTION_KEYS[parseUfsUri(m.mountPoint).scheme];
      for (const key of [...Object.keys(m.options ?? {}), ...(m.encryptOptions ?? []).map((e) => e.name)]) expect(keys, `${m.name} ${key}`).toContain(key);
    }
    const runtime = docs.get('ThinRuntime')! as K8sObject & { spec: { profileName: string; fuse?: { options?: Record<string, string> } } };
    expect(runtime.spec.profileName).toBe(profile.metadata.name);
    for (const key of Object.keys(runtime.spec.fuse?.options ?? {})) expect(Object.keys(FLUID_RUNTIME_OPTIONS), key).toContain(key);
    expect(runtime.metadata.name).toBe(dataset.metadata.name); // Fluid binds them by name
  });
});
