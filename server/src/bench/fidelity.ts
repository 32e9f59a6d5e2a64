// fidelity.ts — `specode bench fidelity`: how much each KV policy changes
// what the model says, on long real inputs (issue #3; shared/BENCH.md).
//
// Tasks (RULER-style):
//   needle-single    one passkey sentence at depth d of a haystack of real
//                    code and prose; asked for in a ChatML turn; accuracy =
//                    the greedy answer's first number is the passkey.
//   needle-multikey  the same with distractor passkeys for other names.
//   code-agreement   repo-level FIM prompt; `full` continues greedily for N
//                    tokens; each policy is teacher-forced on that
//                    continuation and we count positions where its greedy
//                    token equals full's.
//
// Protocol: as in the SpeCache paper, the whole prompt (haystack + question)
// is prefilled with ordinary full attention under every policy; the policy
// acts on the generated tokens (decode steps). So the answer's first token is
// the prefill's and every later one is the policy's. Needle answers start
// with the answer prefix "The secret passkey for X is", so the first generated
// token is the space before the digits and all digits come from decode steps.
//
// Cost: prefill dominates on a CPU. Every input is prefilled once, by `full`;
// the other policies copy its K/V rows (ctx.copyFrom writes them through the
// policy exactly as its own prefill would). Within one trial the needle moves
// from the deepest depth to the shallowest, so full keeps the KV of every id
// before the needle (prefix reuse) and only the rest is recomputed.
import { availableParallelism } from 'node:os';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readGguf } from '../engine/gguf';
import { loadAddon, type ContextOptions, type KvMetrics, type KvPolicy, type NativeContext, type NativeModel } from '../engine/native';
import { Tokenizer } from '../engine/tokenizer';
import { envelope, log, projectRoot, sha256File, type Envelope, type ParamBits } from './common';
import {
  agreement, boundaries, buildFimCase, buildHaystack, deriveSeed, depths as depthList, listDocs, makeNeedles,
  needlePromptHead, needlePromptTail, placeNeedles, rng, scoreAnswer, answerComplete, seededDocs, type DocKind, type DocRef,
  type TextTokenizer,
} from './haystack';

export type FidelityTask = 'needle-single' | 'needle-multikey' | 'code-agreement';
export const FIDELITY_TASKS: FidelityTask[] = ['needle-single', 'needle-multikey', 'code-agreement'];
export const FIDELITY_POLICIES: KvPolicy[] = ['full', 'specache', 'specache-sync', 'offload-all'];

export interface FidelityOptions {
  modelName: string;
  modelPath: string;
  threads: number;
  /** Prompt + generation budget per context, in tokens. */
  contexts: number[];
  policies: KvPolicy[];
  /** Bits of the low-bit copy for the specache policies. */
  bits: (1 | 2)[];
  group?: 32 | 64;
  topk?: number;
  /** specache: two-stage row choice (see ContextOptions.rerank; default automatic per bits). */
  rerank?: number;
  /** specache* at 2 bits: symmetric values (ContextOptions.symValues). */
  symValues?: boolean;
  /** specache*: the widths of the copy's scales and zeros to run, each its own configuration
   * (ContextOptions.paramBits; 'auto': the engine's choice, 8 at 2 bits and 16 at 1 bit on the
   * CPU; default ['auto']). */
  paramBits?: ParamBits[];
  residual?: number;
  tasks: FidelityTask[];
  trials: number;
  /** Needle depths per trial (evenly spaced, 0% … 100%). */
  depths: number;
  /** code-agreement: tokens full generates (positions scored: genTokens − 1). */
  genTokens: number;
  /** needle tasks: max answer tokens. */
  answerTokens?: number;
  /** needle-multikey: needles in all (1 asked for + distractors). */
  keys?: number;
  seed?: number;
  haystack?: DocKind | 'mixed';
  /** specache: ask the engine for the true top-k each step (top-k overlap; slower decode). */
  measure?: boolean;
  /** The command line, recorded in the JSON. */
  command?: string;
  /** Explicit policy configurations (instead of policies × bits); full is added first. */
  configs?: PolicyCfg[];
  /** Called with the envelope after every finished row (for partial results). */
  onRow?: (env: Envelope) => void;
}

/** One policy configuration: a context is made with these options. */
export interface PolicyCfg {
  policy: KvPolicy;
  bits: 1 | 2 | null;
  label: string;
  /** Extra context options (budgets, residual, ...), applied last. */
  opts?: Partial<ContextOptions>;
  /** Run its own prefills instead of copying full's rows (policies that score rows while
   * prefilling, e.g. h2o and kvmerger accumulate attention there). */
  ownPrefill?: boolean;
}

export interface FidelityRow {
  policy: KvPolicy;
  /** The configuration's name (policy, bits, budget). */
  label?: string;
  bits: number | null;
  group: number | null;
  /** specache*: bits of each scale and zero of the low-bit copy as the engine reports them (KvMetrics.lowbitParamBits). */
  param_bits?: number;
  topk: number | null;
  ctx: number;
  task: FidelityTask;
  trials: number;
  accuracy: number | null;
  greedy_agreement: number | null;
  device_kv_bytes: number | null;
  fp16_kv_bytes: number | null;
  topk_overlap: number | null;
  spec_match: number | null;
  stall_frac: number | null;
  // Extra fields.
  samples: number;
  prompt_tokens: number;
  accuracy_by_depth?: { depth: number; correct: number; n: number }[];
  /** needle tasks: answers identical (as text) to full's on the same prompt. */
  answer_match_full?: number | null;
  /** code-agreement: teacher-forced positions scored in all. */
  positions?: number;
  host_kv_bytes: number | null;
  compression_ratio: number | null;
  topk_mass_recall: number | null;
  fetch_bytes_per_step: number | null;
  prefill_tokens_computed: number;
  prefill_s: number;
  /** Seconds spent copying full's prefilled rows into this policy (ctx.copyFrom). */
  copy_s: number;
  decode_steps: number;
  decode_s: number;
  answers?: string[];
}

// ------------------------------------------------------------ engine glue

interface Caps {
  policies: boolean;
  metrics: boolean;
  decodeSpec: boolean;
  note?: string;
}

/** What the loaded addon can do (it is being extended: never assume). */
function probeCaps(model: NativeModel): Caps {
  let probe: NativeContext | undefined;
  try {
    probe = model.createContext({ nCtx: 64, policy: 'specache', bits: 2 });
    const metrics = typeof (probe as Partial<NativeContext>).metrics === 'function';
    const decodeSpec = typeof (probe as Partial<NativeContext>).decodeSpec === 'function';
    const policies = metrics && probe.metrics().policy === 'specache';
    return {
      policies, metrics, decodeSpec,
      note: policies ? undefined : 'the native addon ignores the policy option (built before KV policies landed): only full can run, and metrics are null',
    };
  } catch (e) {
    return { policies: false, metrics: false, decodeSpec: false, note: `the native addon refused a specache context: ${(e as Error).message}` };
  } finally {
    probe?.free();
  }
}

function argmax(x: Float32Array, banned?: Set<number>): number {
  let best = -1;
  let bv = -Infinity;
  for (let i = 0; i < x.length; i++) {
    if (x[i] > bv && !(banned && banned.has(i))) {
      bv = x[i];
      best = i;
    }
  }
  return best;
}

/** A context plus the ids it holds, with prefix reuse and one-token steps. */
class Runner {
  held: number[] = [];
  prefillTokens = 0;
  prefillMs = 0;
  steps = 0;
  stepMs = 0;
  copyMs = 0;
  private last: Float32Array | null = null;

  constructor(readonly ctx: NativeContext, readonly caps: Caps) {}

  /** The logits of the last prefill or step. */
  lastLogits(): Float32Array {
    if (!this.last) throw new Error('fidelity: no logits yet');
    return this.last;
  }

  /** Make the context hold `ids`; returns the last token's logits. */
  async prefill(ids: number[]): Promise<Float32Array> {
    let common = 0;
    const max = Math.min(this.held.length, ids.length);
    while (common < max && this.held[common] === ids[common]) common++;
    if (common === ids.length) common--;
    this.ctx.truncate(common);
    this.held = ids.slice(0, common);
    const t0 = performance.now();
    const logits = await this.ctx.decode(Int32Array.from(ids.slice(common)), { wantLogits: true });
    this.prefillMs += performance.now() - t0;
    this.prefillTokens += ids.length - common;
    this.held = ids.slice();
    if (!logits) throw new Error('fidelity: the engine returned no logits');
    this.last = logits;
    return logits;
  }

  /** One generation step for `tok` (the speculative two-token step where the engine has one). */
  async step(tok: number): Promise<Float32Array> {
    const t0 = performance.now();
    let logits: Float32Array | null;
    if (this.caps.decodeSpec) logits = (await this.ctx.decodeSpec(tok)).logits;
    else logits = await this.ctx.decode(Int32Array.of(tok), { wantLogits: true });
    this.stepMs += performance.now() - t0;
    this.steps++;
    this.held.push(tok);
    if (!logits) throw new Error('fidelity: the engine returned no logits');
    this.last = logits;
    return logits;
  }

  resetMetrics(): void {
    if (this.caps.metrics) this.ctx.resetMetrics();
  }

  metrics(): KvMetrics | null {
    return this.caps.metrics ? this.ctx.metrics() : null;
  }
}

// ------------------------------------------------------------ inputs

interface NeedleSample {
  depth: number;
  ids: number[];
  expected: string;
  /** Needle start as a fraction of the haystack (measured). */
  placedDepth: number;
}

interface NeedleTrial {
  samples: NeedleSample[];  // deepest first (prefix reuse)
  docs: number;
}

function needleTrial(tok: Tokenizer, tt: TextTokenizer, refs: DocRef[], o: FidelityOptions, task: FidelityTask, ctx: number, trial: number): NeedleTrial {
  const seed = deriveSeed(o.seed ?? 1, task, ctx, trial);
  const rand = rng(seed);
  const nKeys = task === 'needle-multikey' ? Math.max(2, o.keys ?? 4) : 1;
  const needles = makeNeedles(tt, rand, nKeys);
  const target = needles[0];
  const head = tok.encode(needlePromptHead(), { addSpecial: true, parseSpecial: true });
  const tail = tok.encode(needlePromptTail(target.key), { addSpecial: false, parseSpecial: true });
  const answerRoom = (o.answerTokens ?? 16) + 2;
  const needleTokens = needles.reduce((s, n) => s + n.ids.length, 0);
  const hayLen = ctx - head.length - tail.length - needleTokens - answerRoom;
  if (hayLen < 64) throw new Error(`fidelity: ctx ${ctx} is too small for the needle prompt`);
  const hay = buildHaystack(tt, seededDocs(refs, seed, o.haystack ?? 'mixed'), hayLen);
  const bounds = boundaries(tt, hay.ids);
  // Distractors at seeded depths, the same for every depth of the target.
  const distractorDepths = needles.slice(1).map(() => rand());
  const samples: NeedleSample[] = [];
  for (const depth of [...depthList(o.depths)].sort((a, b) => b - a)) {
    const placed = placeNeedles(tt, hay.ids, [{ ids: target.ids, depth }, ...needles.slice(1).map((n, i) => ({ ids: n.ids, depth: distractorDepths[i] }))], { bounds });
    samples.push({ depth, ids: [...head, ...placed.ids, ...tail], expected: target.value, placedDepth: placed.cuts[0] / hay.ids.length });
  }
  return { samples, docs: hay.docs.length };
}

// ------------------------------------------------------------ aggregation

class Acc {
  samples = 0;
  correct = 0;
  matchFull = 0;
  matchFullN = 0;
  agree = 0;
  positions = 0;
  byDepth = new Map<number, { correct: number; n: number }>();
  answers: string[] = [];
  promptTokens = 0;
  // metrics
  m = 0;
  deviceKv = 0;
  fp16Kv = 0;
  hostKv = 0;
  stallNs = 0;
  stepNs = 0;
  specChecked = 0;
  specMatched = 0;
  overlapSamples = 0;
  overlapSum = 0;
  massSum = 0;
  fetchBytes = 0;
  steps = 0;
  /** KvMetrics.lowbitParamBits (0: no low-bit copy, or an addon that does not say). */
  paramBits = 0;

  addMetrics(x: KvMetrics | null): void {
    if (!x) return;
    this.m++;
    this.deviceKv += x.deviceKvBytes;
    this.fp16Kv += x.fp16KvBytes;
    this.hostKv += x.hostKvBytes;
    this.stallNs += x.stallNsTotal;
    this.stepNs += x.stepNsTotal;
    this.specChecked += x.specChecked;
    this.specMatched += x.specMatched;
    this.overlapSamples += x.overlapSamples;
    this.overlapSum += x.topkOverlap * x.overlapSamples;
    this.massSum += x.topkMassRecall * x.overlapSamples;
    this.fetchBytes += x.fetchBytesTotal;
    this.steps += x.steps;
    this.paramBits = x.lowbitParamBits ?? 0;
  }
}

const ratio = (a: number, b: number): number | null => (b > 0 ? a / b : null);

// ------------------------------------------------------------ the suite

export async function benchFidelity(o: FidelityOptions): Promise<Envelope> {
  const env = await envelope('fidelity', o.modelName, o.modelPath, o.threads);
  const notes: string[] = [];
  const addon = loadAddon();
  const file = await readGguf(o.modelPath);
  const tok = Tokenizer.fromGguf(file);
  const tt: TextTokenizer = {
    encode: (s) => tok.encode(s, { addSpecial: false, parseSpecial: false }),
    decode: (ids) => tok.decode(ids),
  };
  const model = await addon.loadModel(o.modelPath, { threads: o.threads });
  const info = model.info();
  const caps = probeCaps(model);
  if (caps.note) notes.push(caps.note);
  if (!caps.decodeSpec) notes.push('the addon has no decodeSpec: decode steps are plain one-token decodes');
  const eog = new Set(tok.eogIds);

  const group = o.group ?? 64;
  const topk = o.topk ?? 64;
  const rerank = o.rerank;  // undefined: the engine's automatic choice for each width
  const residual = o.residual ?? 64;
  // Policy configurations; full first (code-agreement needs its continuation).
  const cfgs: PolicyCfg[] = [];
  // full always runs: it prefills for the others and is the reference.
  cfgs.push({ policy: 'full', bits: null, label: 'full' });
  if (o.configs) cfgs.push(...o.configs.filter((c) => c.policy !== 'full' || c.opts));
  else
    for (const p of o.policies) {
      if (p === 'full') continue;
      if (p === 'specache' || p === 'specache-sync')
        for (const b of o.bits)
          for (const pb of o.paramBits ?? ['auto'])
            cfgs.push(pb === 'auto' ? { policy: p, bits: b, label: `${p}/${b}b` } : { policy: p, bits: b, label: `${p}/${b}b/p${pb}`, opts: { paramBits: pb } });
      else cfgs.push({ policy: p, bits: null, label: p });
    }
  const runnable = cfgs.filter((c) => c.policy === 'full' || caps.policies);
  const skipped = cfgs.filter((c) => !runnable.includes(c));
  if (skipped.length) notes.push(`not run (addon lacks KV policies): ${skipped.map((c) => c.label).join(', ')}`);

  const root = projectRoot();
  const refs = listDocs([join(root, 'node_modules')]);
  env.inputs = {
    haystack: `real files from ${join(root, 'node_modules')} (${refs.filter((r) => r.kind === 'code').length} code, ${refs.filter((r) => r.kind === 'prose').length} prose candidates), kind ${o.haystack ?? 'mixed'}, seed ${o.seed ?? 1}`,
    needle: 'The secret passkey for <First Last> is <5 digits>.  (own line; line-end boundary nearest the depth)',
    chat: 'Qwen2.5 ChatML, default system prompt, answer prefix "The secret passkey for <name> is"',
    code: "repo-level FIM (<|repo_name|>, <|file_sep|>, <|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>), current file cut at a seeded line",
  };
  env.protocol = {
    prefill: 'whole prompt prefilled with full attention under every policy (as in the SpeCache paper); policies act on decode steps',
    decode_step: caps.decodeSpec ? 'ctx.decodeSpec (specache: real + speculative token in one pass; full: the same two-token step, exact)' : 'ctx.decode of one token',
    accuracy: "needle tasks: the answer's first digit run equals the passkey",
    greedy_agreement: `code-agreement: teacher-forced on full's greedy continuation (end-of-generation tokens masked from the argmax of both), positions = gen_tokens - 1 decode steps; needle tasks: null (see answer_match_full)`,
    metrics: 'ctx.metrics() after each sample\'s decode steps (counters reset after its prefill); device_kv_bytes and fp16_kv_bytes are means over samples; spec_match, stall_frac, topk_overlap pooled over steps',
  };
  env.params = {
    contexts: o.contexts, policies: o.policies, bits: o.bits, group, topk, rerank: rerank ?? 'auto (16 at 1 bit, 4 at 2 bits)', ...(o.symValues ? { sym_values: '2-bit values symmetric (one fp16 scale per group, no zero)' } : {}), param_bits: o.paramBits ?? ['auto'], residual, tasks: o.tasks, trials: o.trials,
    depths: o.depths, gen_tokens: o.genTokens, answer_tokens: o.answerTokens ?? 16, keys: o.keys ?? 4, seed: o.seed ?? 1,
    measure: o.measure ?? true, n_batch: 256,
  };
  const addonPath = process.env.SPECODE_ADDON ? resolve(process.env.SPECODE_ADDON) : join(root, 'native', 'build', 'specode.node');
  env.addon = { path: addonPath, sha256: existsSync(addonPath) ? await sha256File(addonPath) : 'unknown', cpu_kernels: addon.cpuKernels() };
  env.model_info = { arch: info.arch, nLayer: info.nLayer, nHeadKv: info.nHeadKv, headDim: info.headDim, fileType: info.fileType, nCtxTrain: info.nCtxTrain };
  env.caps = caps;
  if (o.command) env.command = o.command;
  env.notes = notes;
  const rows: FidelityRow[] = [];
  env.rows = rows;

  try {
    for (const ctxLen of o.contexts) {
      if (ctxLen > info.nCtxTrain) {
        notes.push(`ctx ${ctxLen} skipped: the model was trained for ${info.nCtxTrain}`);
        continue;
      }
      // Inputs for this context size (the same ids for every policy).
      const needleInputs = new Map<string, NeedleTrial[]>();
      for (const task of o.tasks) {
        if (task === 'code-agreement') continue;
        const trials: NeedleTrial[] = [];
        for (let t = 0; t < o.trials; t++) trials.push(needleTrial(tok, tt, refs, o, task, ctxLen, t));
        needleInputs.set(task, trials);
        const err = Math.max(...trials.flatMap((tr) => tr.samples.map((s) => Math.abs(s.placedDepth - s.depth))));
        log(`ctx ${ctxLen} ${task}: ${trials.length} trial(s) × ${o.depths} depths, prompt ${trials[0].samples[0].ids.length} tokens, max depth error ${(100 * err).toFixed(2)}%`);
      }
      const fimCases = o.tasks.includes('code-agreement')
        ? Array.from({ length: o.trials }, (_, t) =>
            buildFimCase((s) => tok.encode(s, { addSpecial: false, parseSpecial: true }), refs, deriveSeed(o.seed ?? 1, 'code-agreement', ctxLen, t), ctxLen - o.genTokens - 2))
        : [];
      for (const c of fimCases) log(`ctx ${ctxLen} code-agreement: ${c.repo} ${c.path} cut at line ${c.cutLine}, ${c.ids.length} prompt tokens, ${c.files.length} repo files`);
      // Every policy's context at once; `full` runs each prefill (with prefix reuse) and the
      // others copy its K/V rows (ctx.copyFrom: the same rows a prefill of their own would
      // write, without running the model again), so each input is prefilled once.
      const live: { cfg: PolicyCfg; ctx: NativeContext; run: Runner; report: boolean }[] = [];
      try {
        for (const cfg of runnable) {
          const copts: ContextOptions = { nCtx: ctxLen, nBatch: 256, threads: o.threads, kvType: 'f16' };
          if (caps.policies) {
            copts.policy = cfg.policy;
            if (cfg.bits !== null) Object.assign(copts, { bits: cfg.bits, group, topk, ...(rerank ? { rerank } : {}), ...(o.symValues && cfg.bits === 2 ? { symValues: true } : {}), residual, measure: cfg.policy === 'specache' && (o.measure ?? true) });
            if (cfg.opts) Object.assign(copts, cfg.opts);
          }
          const ctx = model.createContext(copts);
          live.push({ cfg, ctx, run: new Runner(ctx, caps), report: cfg.policy !== 'full' || o.policies.includes('full') });
          if (caps.policies) {
            const got = ctx.metrics().policy;
            if (got !== cfg.policy) throw new Error(`fidelity: asked for policy ${cfg.policy}, the context reports ${got}`);
          }
        }
        const src = live[0];  // full (cfgs puts it first)
        const canCopy = src.cfg.policy === 'full' && typeof (src.ctx as Partial<NativeContext>).copyFrom === 'function';
        if (!canCopy) notes.push('each policy ran its own prefills (no ctx.copyFrom)');
        /** Make `who` hold ids; returns the last logits (full prefills, the others copy it). */
        const prepare = async (who: (typeof live)[number], ids: number[]): Promise<Float32Array> => {
          if (!canCopy || who === src || who.cfg.ownPrefill) return who.run.prefill(ids);
          if (src.run.held.length !== ids.length || src.run.held.some((x, i) => x !== ids[i])) await src.run.prefill(ids);
          const t0 = performance.now();
          who.ctx.copyFrom(src.ctx);
          who.run.copyMs += performance.now() - t0;
          who.run.held = ids.slice();
          return src.run.lastLogits();
        };

        for (const task of o.tasks) {
          const accs = live.map(() => new Acc());
          const p0 = live.map((x) => ({ tok: x.run.prefillTokens, ms: x.run.prefillMs, copy: x.run.copyMs, steps: x.run.steps, stepMs: x.run.stepMs }));
          if (task === 'code-agreement') {
            for (let t = 0; t < fimCases.length; t++) {
              const ids = fimCases[t].ids;
              let ref: number[] = [];
              for (const [i, x] of live.entries()) {
                const acc = accs[i];
                acc.promptTokens = ids.length;
                let logits = await prepare(x, ids);
                x.run.resetMetrics();
                if (x === src) {
                  // full's greedy continuation, end-of-generation masked so it has genTokens tokens;
                  // then full is teacher-forced on it like every other policy (a determinism check).
                  ref = [argmax(logits, eog)];
                  while (ref.length < o.genTokens) {
                    logits = await x.run.step(ref[ref.length - 1]);
                    ref.push(argmax(logits, eog));
                  }
                  logits = await prepare(x, ids);
                  x.run.resetMetrics();
                }
                let agree = 0;
                for (let k = 0; k + 1 < ref.length; k++) {
                  logits = await x.run.step(ref[k]);
                  if (argmax(logits, eog) === ref[k + 1]) agree++;
                }
                acc.addMetrics(x.run.metrics());
                acc.agree += agree;
                acc.positions += ref.length - 1;
                acc.samples++;
                log(`ctx ${ctxLen} ${x.cfg.label} code-agreement trial ${t}: ${agree}/${ref.length - 1} positions agree with full`);
              }
            }
          } else {
            for (const [t, trial] of needleInputs.get(task)!.entries()) {
              for (const s of trial.samples) {
                let fullText: string | undefined;
                for (const [i, x] of live.entries()) {
                  const acc = accs[i];
                  acc.promptTokens = trial.samples[0].ids.length;
                  let logits = await prepare(x, s.ids);
                  x.run.resetMetrics();
                  const out: number[] = [];
                  let text = '';
                  for (;;) {
                    const next = argmax(logits);
                    if (eog.has(next)) break;
                    out.push(next);
                    text = tok.decode(out, { special: false });
                    if (answerComplete(text) || out.length >= (o.answerTokens ?? 16)) break;
                    logits = await x.run.step(next);
                  }
                  acc.addMetrics(x.run.metrics());
                  const ok = scoreAnswer(text, s.expected);
                  acc.samples++;
                  if (ok) acc.correct++;
                  const d = acc.byDepth.get(s.depth) ?? { correct: 0, n: 0 };
                  d.n++;
                  if (ok) d.correct++;
                  acc.byDepth.set(s.depth, d);
                  acc.answers.push(text);
                  if (x.cfg.policy === 'full') fullText = text;
                  else if (fullText !== undefined) {
                    acc.matchFullN++;
                    if (fullText === text) acc.matchFull++;
                  }
                  log(`ctx ${ctxLen} ${x.cfg.label} ${task} trial ${t} depth ${(100 * s.depth).toFixed(0)}%: ${ok ? 'ok ' : 'MISS'} ${JSON.stringify(text)} (passkey ${s.expected})`);
                }
              }
            }
          }
          for (const [i, x] of live.entries()) {
            const acc = accs[i];
            const cfg = x.cfg;
            const run = x.run;
            const row: FidelityRow = {
              policy: cfg.policy,
              label: cfg.label,
              bits: cfg.bits,
              group: cfg.bits !== null ? group : null,
              ...(acc.paramBits ? { param_bits: acc.paramBits } : {}),
              topk: cfg.bits !== null ? topk : null,
              ctx: ctxLen,
              task,
              trials: o.trials,
              accuracy: task === 'code-agreement' ? null : ratio(acc.correct, acc.samples),
              greedy_agreement: task === 'code-agreement' ? ratio(acc.agree, acc.positions) : null,
              device_kv_bytes: acc.m ? Math.round(acc.deviceKv / acc.m) : null,
              fp16_kv_bytes: acc.m ? Math.round(acc.fp16Kv / acc.m) : null,
              topk_overlap: acc.overlapSamples ? acc.overlapSum / acc.overlapSamples : null,
              spec_match: acc.m ? ratio(acc.specMatched, acc.specChecked) : null,
              stall_frac: acc.m ? ratio(acc.stallNs, acc.stepNs) : null,
              samples: acc.samples,
              prompt_tokens: acc.promptTokens,
              host_kv_bytes: acc.m ? Math.round(acc.hostKv / acc.m) : null,
              compression_ratio: acc.m && acc.deviceKv ? acc.fp16Kv / acc.deviceKv : null,
              topk_mass_recall: acc.overlapSamples ? acc.massSum / acc.overlapSamples : null,
              fetch_bytes_per_step: acc.m ? ratio(acc.fetchBytes, acc.steps) : null,
              prefill_tokens_computed: run.prefillTokens - p0[i].tok,
              prefill_s: (run.prefillMs - p0[i].ms) / 1000,
              copy_s: (run.copyMs - p0[i].copy) / 1000,
              decode_steps: run.steps - p0[i].steps,
              decode_s: (run.stepMs - p0[i].stepMs) / 1000,
            };
            if (task === 'code-agreement') row.positions = acc.positions;
            else {
              row.accuracy_by_depth = [...acc.byDepth.entries()].sort((a, b) => a[0] - b[0]).map(([depth, v]) => ({ depth, ...v }));
              row.answer_match_full = cfg.policy === 'full' ? null : ratio(acc.matchFull, acc.matchFullN);
              row.answers = acc.answers;
            }
            if (!x.report) continue;  // full ran as the reference only
            rows.push(row);
            log(
              `ctx ${ctxLen} ${cfg.label} ${task}: ` +
                (row.accuracy !== null ? `accuracy ${row.accuracy.toFixed(3)}` : `agreement ${row.greedy_agreement?.toFixed(4)}`) +
                ` (${row.samples} samples; prefill ${row.prefill_tokens_computed} tok in ${row.prefill_s.toFixed(0)} s, ${row.decode_steps} steps in ${row.decode_s.toFixed(1)} s)`,
            );
          }
          o.onRow?.(env);
        }
      } finally {
        for (const x of live) x.ctx.free();
      }
    }
  } finally {
    model.free();
  }
  return env;
}

/** Parse a comma list of policies. */
export function parsePolicies(s: string): KvPolicy[] {
  const out = s.split(',').map((x) => x.trim()).filter(Boolean);
  for (const p of out) if (!FIDELITY_POLICIES.includes(p as KvPolicy)) throw new Error(`unknown policy '${p}' (known: ${FIDELITY_POLICIES.join(', ')})`);
  return out as KvPolicy[];
}

export function defaultThreads(): number {
  return availableParallelism();
}
