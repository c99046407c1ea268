// textgen's exported page: the model runs here, in the browser, with no server.
//
// The weights come embedded in the page (int8 with a scale per row, float16 or float32) and are decoded once
// into float32 in a WebAssembly memory. A step is the same as the ONNX step graph's (export/steps.py): layer 0's
// input is a row of the `inputs` table (or that row times W_ih), then per layer gi = x W_ih^T + b_ih,
// gh = h W_hh^T + b_hh and the cell's elementwise update (CELLS below: adding a cell is one entry there and one
// in steps.py), then the logits. The matrix-vector products run in matvec.wasm (128-bit SIMD, about six times
// plain JavaScript), or in plain JavaScript where WebAssembly SIMD is missing. Sampling applies the same rules
// in the same order as textgen's processors: the unknown token banned, temperature, top-k, top-p.
"use strict";

const $ = (id) => document.getElementById(id);
const MODEL = JSON.parse($("model").textContent);

// ---------------------------------------------------------------------------------------------- the cells
const sigmoid = (x) => 1 / (1 + Math.exp(-x));
const CELLS = {
  // gi, gh: (gates x H) projections of the input and of h; state: this layer's tensors, updated in place.
  lstm: {
    gates: 4,
    step(gi, gh, [h, c], H) {
      for (let j = 0; j < H; j++) {
        const i = sigmoid(gi[j] + gh[j]);
        const f = sigmoid(gi[H + j] + gh[H + j]);
        const g = Math.tanh(gi[2 * H + j] + gh[2 * H + j]);
        const o = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
        c[j] = f * c[j] + i * g;
        h[j] = o * Math.tanh(c[j]);
      }
    },
  },
  gru: {
    gates: 3,
    step(gi, gh, [h], H) {
      for (let j = 0; j < H; j++) {
        const r = sigmoid(gi[j] + gh[j]);
        const z = sigmoid(gi[H + j] + gh[H + j]);
        const n = Math.tanh(gi[2 * H + j] + r * gh[2 * H + j]);
        h[j] = (1 - z) * n + z * h[j];
      }
    },
  },
  rnn: {
    gates: 1,
    step(gi, gh, [h], H) {
      for (let j = 0; j < H; j++) h[j] = Math.tanh(gi[j] + gh[j]);
    },
  },
};

// ---------------------------------------------------------------------------------------------- the weights
const ceil4 = (n) => (n + 3) & ~3;

function base64Bytes(text) {
  const s = atob(text.trim());
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

let halfTable = null; // float16 bits -> value
function halfToFloat() {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const e = (bits >> 10) & 31;
    const m = bits & 1023;
    const v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
    halfTable[bits] = bits & 0x8000 ? -v : v;
  }
  return halfTable;
}

// A bump allocator over one WebAssembly memory: every tensor padded to rows and columns of multiples of 4.
class Arena {
  constructor(floats) {
    this.memory = new WebAssembly.Memory({ initial: Math.ceil((4 * floats) / 65536) + 1 });
    this.f32 = new Float32Array(this.memory.buffer);
    this.top = 0;
  }
  alloc(rows, cols = 1) {
    const n = ceil4(rows) * (cols === 1 ? 1 : ceil4(cols));
    const at = this.top;
    this.top += n;
    return { ptr: 4 * at, rows, cols: cols === 1 ? 1 : ceil4(cols), data: this.f32.subarray(at, at + n) };
  }
}

// Decode one stored tensor into `t` (its padded float32 home), row by row.
function decodeTensor(spec, blob, t) {
  const [rows, cols] = spec.shape.length === 2 ? spec.shape : [spec.shape[0], 1];
  const stride = t.cols;
  if (spec.dtype === "float32") {
    const src = new Float32Array(blob.buffer, spec.offset, rows * cols);
    for (let r = 0; r < rows; r++) t.data.set(src.subarray(r * cols, (r + 1) * cols), r * stride);
  } else if (spec.dtype === "float16") {
    const src = new Uint16Array(blob.buffer, spec.offset, rows * cols);
    const table = halfToFloat();
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t.data[r * stride + c] = table[src[r * cols + c]];
  } else {
    const src = new Int8Array(blob.buffer, spec.offset, rows * cols);
    const scale = new Float32Array(blob.buffer, spec.scale_offset, rows);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t.data[r * stride + c] = src[r * cols + c] * scale[r];
  }
}

function jsMatvec(f32) {
  // y[r] += sum_c W[r][c] x[c], four rows at a time (the same contract as matvec.wasm)
  return (w, x, y, rows, cols) => {
    w >>= 2;
    x >>= 2;
    y >>= 2;
    for (let r = 0; r < rows; r += 4, w += 4 * cols) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let c = 0; c < cols; c++) {
        const v = f32[x + c];
        const p = w + c;
        s0 += f32[p] * v;
        s1 += f32[p + cols] * v;
        s2 += f32[p + 2 * cols] * v;
        s3 += f32[p + 3 * cols] * v;
      }
      f32[y + r] += s0;
      f32[y + r + 1] += s1;
      f32[y + r + 2] += s2;
      f32[y + r + 3] += s3;
    }
  };
}

function kernel(arena) {
  try {
    const module = new WebAssembly.Module(base64Bytes($("kernel").textContent));
    const exports = new WebAssembly.Instance(module, { env: { memory: arena.memory } }).exports;
    return { name: "WebAssembly SIMD", matvec: exports.matvec };
  } catch {
    return { name: "JavaScript", matvec: jsMatvec(arena.f32) };
  }
}

class Model {
  constructor(spec, blob, useWasm = true) {
    const cell = CELLS[spec.cell];
    if (!cell) throw new Error(`this page cannot run cell ${spec.cell}`);
    const H = spec.hidden_size;
    const G = cell.gates * H;
    const byName = Object.fromEntries(spec.tensors.map((t) => [t.name, t]));
    let floats = 3 * ceil4(G) + ceil4(spec.vocab_size) + spec.state.length * spec.layers * ceil4(H);
    for (const t of spec.tensors) floats += ceil4(t.shape[0]) * (t.shape.length === 2 ? ceil4(t.shape[1]) : 1);
    const arena = new Arena(floats);
    const load = (name) => {
      const t = byName[name];
      if (!t) return null;
      const home = arena.alloc(t.shape[0], t.shape.length === 2 ? t.shape[1] : 1);
      decodeTensor(t, blob, home);
      return home;
    };
    this.cell = cell;
    this.H = H;
    this.V = spec.vocab_size;
    this.inputs = load("inputs");
    this.layers = [];
    for (let k = 0; k < spec.layers; k++) {
      const [w_ih, b_ih, w_hh, b_hh] = ["w_ih", "b_ih", "w_hh", "b_hh"].map((n) => load(`l${k}.${n}`));
      this.layers.push({ w_ih, b_ih, w_hh, b_hh, state: spec.state.map(() => arena.alloc(H)) });
    }
    this.head = load("head");
    this.head_b = load("head_b");
    this.gi = arena.alloc(G);
    this.gh = arena.alloc(G);
    this.logits = arena.alloc(this.V);
    this.kernel = useWasm ? kernel(arena) : { name: "JavaScript", matvec: jsMatvec(arena.f32) };
  }

  reset() {
    for (const layer of this.layers) for (const s of layer.state) s.data.fill(0);
  }

  // One token through the model: the state moves on, and the next token's logits come back (V floats).
  step(token) {
    const { matvec } = this.kernel;
    const { H, gi, gh, inputs } = this;
    const row = { ptr: inputs.ptr + 4 * token * inputs.cols, data: inputs.data.subarray(token * inputs.cols) };
    let x = row;
    for (const layer of this.layers) {
      if (layer.w_ih) {
        gi.data.set(layer.b_ih.data);
        matvec(layer.w_ih.ptr, x.ptr, gi.ptr, ceil4(layer.w_ih.rows), layer.w_ih.cols);
      } else {
        gi.data.set(row.data.subarray(0, gi.data.length)); // layer 0's projection, looked up
      }
      const h = layer.state[0];
      gh.data.set(layer.b_hh.data);
      matvec(layer.w_hh.ptr, h.ptr, gh.ptr, ceil4(layer.w_hh.rows), layer.w_hh.cols);
      this.cell.step(gi.data, gh.data, layer.state.map((s) => s.data), H);
      x = h;
    }
    this.logits.data.set(this.head_b.data);
    matvec(this.head.ptr, x.ptr, this.logits.ptr, ceil4(this.head.rows), this.head.cols);
    return this.logits.data.subarray(0, this.V);
  }
}

// ---------------------------------------------------------------------------------------------- the tokenizers
// Each: encode(text) -> ids (an Error for text the model cannot read), decoder(context ids) -> { push(id) ->
// text, flush() -> text }, and tokenText(id) for the tooltip. They follow data/tokenizers.py.
function charTokenizer(spec) {
  const chars = [...spec.chars];
  const index = new Map(chars.map((c, i) => [c, i + 1]));
  const norm = (t) => (spec.lowercase ? t.toLowerCase() : t);
  return {
    encode(text) {
      const unknown = [...new Set([...norm(text)].filter((c) => !index.has(c)))];
      if (unknown.length) {
        const shown = unknown.slice(0, 10).map((c) => JSON.stringify(c)).join(", ");
        throw new Error(`the prompt has characters outside the model's vocabulary: ${shown}`);
      }
      return [...norm(text)].map((c) => index.get(c));
    },
    decoder: () => ({ push: (id) => (id === 0 ? "\ufffd" : chars[id - 1]), flush: () => "" }),
    tokenText: (id) => (id === 0 ? "<unk>" : chars[id - 1]),
  };
}

const MARKS = "\\u0300-\\u036f\\u1ab0-\\u1aff\\u1dc0-\\u1dff\\u20d0-\\u20ff\\ufe20-\\ufe2f\\ufe00-\\ufe0f\\u{1f3fb}-\\u{1f3ff}";
const W = "[\\p{L}\\p{N}_]"; // Python's \w
const WORD_TOKEN = new RegExp(
  `\\n|\\p{Nd}+(?:[.,:/]\\p{Nd}+)+|(?:${W}[${MARKS}]*)+(?:['’-](?:${W}[${MARKS}]*)+)*|` +
    `[^\\p{L}\\p{N}_\\s][${MARKS}]*(?:\\u200d[^\\p{L}\\p{N}_\\s][${MARKS}]*)*`,
  "gu",
);
const NO_SPACE_BEFORE = new Set([...".,;:!?)]}%…»”’", "\n"]);
const NO_SPACE_AFTER = new Set([..."([{¿¡«“$#", "\n"]);
const QUOTES = new Set(['"', "'"]);
const JOINS_PREVIOUS = new RegExp(`^[${MARKS}\\u200d]`, "u");

function wordTokenizer(spec) {
  const words = spec.words;
  const index = new Map(words.map((w, i) => [w, i]));
  const split = (t) => t.match(spec.spaced ? /\n|[^\s]+/gu : WORD_TOKEN) || [];
  return {
    encode: (text) => split(spec.lowercase ? text.toLowerCase() : text).map((w) => index.get(w) ?? 0),
    decoder(context) {
      let prev = "\n";
      let started = false;
      const open = new Set(); // straight quotes seen an odd number of times
      const push = (id) => {
        const w = words[id];
        let attach;
        if (spec.spaced) attach = w === "\n" || prev === "\n";
        else {
          const closing = QUOTES.has(w) && open.has(w);
          attach = NO_SPACE_BEFORE.has(w[0]) || closing || NO_SPACE_AFTER.has(prev.at(-1)) || open.has(prev);
          attach = attach && !JOINS_PREVIOUS.test(w);
          if (QUOTES.has(w)) open.has(w) ? open.delete(w) : open.add(w);
        }
        const piece = (started && !attach ? " " : "") + w;
        prev = w;
        started = true;
        return piece;
      };
      for (const id of context) if (id !== MODEL.eot_id) push(id);
      return { push, flush: () => "" };
    },
    tokenText: (id) => words[id],
  };
}

function byteLevelAlphabet() {
  // GPT-2's printable stand-in for each byte (the byte-level pre-tokenizer's alphabet)
  const bytes = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.map((b) => String.fromCodePoint(b));
  for (let b = 0, n = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(String.fromCodePoint(256 + n++));
    }
  }
  const encode = new Array(256);
  bytes.forEach((b, i) => (encode[b] = chars[i]));
  return { encode, decode: new Map(chars.map((c, i) => [c, bytes[i]])) };
}

const PRE_TOKEN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function bpeTokenizer(spec) {
  const { vocab, merges } = spec.hf.model;
  const tokens = [];
  for (const [t, i] of Object.entries(vocab)) tokens[i] = t;
  const ranks = new Map(merges.map((m, i) => [Array.isArray(m) ? m.join(" ") : m, i]));
  const alphabet = byteLevelAlphabet();
  const utf8 = new TextEncoder();
  const merge = (word) => {
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
      }
      if (best < 0) break;
      const [a, b] = [word[best], word[best + 1]];
      const merged = [];
      for (let i = 0; i < word.length; ) {
        if (i + 1 < word.length && word[i] === a && word[i + 1] === b) {
          merged.push(a + b);
          i += 2;
        } else merged.push(word[i++]);
      }
      word = merged;
    }
    return word;
  };
  const bytesOf = (id) => {
    const out = [];
    for (const c of tokens[id]) {
      const b = alphabet.decode.get(c);
      if (b === undefined) out.push(...utf8.encode(c));
      else out.push(b);
    }
    return new Uint8Array(out);
  };
  return {
    encode(text) {
      const ids = [];
      for (const [piece] of (spec.lowercase ? text.toLowerCase() : text).matchAll(PRE_TOKEN)) {
        const word = [...utf8.encode(piece)].map((b) => alphabet.encode[b]);
        for (const t of merge(word)) ids.push(vocab[t] ?? 0);
      }
      return ids;
    },
    decoder() {
      const bytes = new TextDecoder("utf-8"); // holds back an incomplete character until its last byte
      return { push: (id) => bytes.decode(bytesOf(id), { stream: true }), flush: () => bytes.decode() };
    },
    tokenText: (id) => new TextDecoder().decode(bytesOf(id)),
  };
}

const TOKENIZERS = { char: charTokenizer, word: wordTokenizer, bpe: bpeTokenizer };

// ---------------------------------------------------------------------------------------------- sampling
// The distribution a token is drawn from, after the same processors as textgen's, in the same order.
function distribution(logits, { temperature, top_k, top_p }) {
  const V = logits.length;
  const x = Float64Array.from(logits);
  for (const id of MODEL.banned_ids) x[id] = -Infinity;
  let max = -Infinity;
  let best = 0;
  for (let i = 0; i < V; i++) if (x[i] > max) [max, best] = [x[i], i];
  if (temperature === 0) {
    x.fill(-Infinity);
    x[best] = 0;
  } else if (temperature !== 1) {
    for (let i = 0; i < V; i++) x[i] = x[i] === max ? 0 : (x[i] - max) / temperature;
  }
  if (top_k > 0 && top_k < V) {
    const kth = Float64Array.from(x).sort().reverse()[top_k - 1]; // ties at the k-th score are kept
    for (let i = 0; i < V; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  if (top_p < 1) {
    const p = softmax(x);
    const order = [...x.keys()].sort((a, b) => x[b] - x[a] || a - b);
    let before = 0; // the mass of the tokens ranked ahead
    order.forEach((i, rank) => {
      if (rank > 0 && before >= top_p) x[i] = -Infinity;
      before += p[i];
    });
  }
  return softmax(x);
}

function softmax(x) {
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  const p = new Float64Array(x.length);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += p[i] = Math.exp(x[i] - max);
  for (let i = 0; i < x.length; i++) p[i] /= sum;
  return p;
}

function draw(p, random) {
  const u = random();
  let acc = 0;
  let last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    acc += p[i];
    last = i;
    if (u < acc) return i;
  }
  return last;
}

function seeded(seed) {
  // mulberry32: a small, good-enough generator for reproducible samples
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------------------------- the page
const SLIDERS = {
  temperature: (v) => Number(v).toFixed(2),
  top_k: (v) => (Number(v) === 0 ? "off" : v),
  top_p: (v) => (Number(v) >= 1 ? "off" : Number(v).toFixed(2)),
  max_tokens: (v) => v,
};
const TOP = 5; // alternatives shown for each token
let model = null;
let tokenizer = null;
let running = false;
let stopping = false;

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function showValue(name) {
  $(`${name}_value`).textContent = SLIDERS[name]($(name).value);
}

// Let the page paint and take clicks; a message is not slowed down as nested timeouts are.
function yieldToBrowser() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

function topTokens(p) {
  const order = [...p.keys()].sort((a, b) => p[b] - p[a]).slice(0, TOP);
  return Object.fromEntries(order.filter((i) => p[i] > 0).map((i) => [tokenizer.tokenText(i), Math.log(p[i])]));
}

async function generate(event) {
  event.preventDefault();
  if (running || !model) return;
  const settings = {
    temperature: Number($("temperature").value),
    top_k: Number($("top_k").value),
    top_p: Number($("top_p").value),
  };
  const length = Number($("max_tokens").value);
  const prompt = $("prompt").value;
  let ids;
  try {
    ids = tokenizer.encode(prompt);
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const context = ids.length ? ids : MODEL.start_ids; // an empty prompt starts a new text
  const random = $("seed").value === "" ? Math.random : seeded(Number($("seed").value));
  const out = $("output");
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  out.replaceChildren(promptSpan);
  out.dataset.state = "running";
  running = true;
  stopping = false;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  let tokens = 0;
  let chars = 0;
  let finish = "length";
  const stats = () => {
    const seconds = (performance.now() - started) / 1000;
    const rate = chars / Math.max(seconds, 1e-3);
    $("stats").textContent =
      `${tokens} tokens, ${chars} characters in ${seconds.toFixed(2)} s (${rate.toFixed(0)} characters/s)` +
      (out.dataset.state === "done" ? ` · finished: ${finish}` : "");
    $("stats").dataset.charsPerSecond = rate.toFixed(1);
  };
  try {
    model.reset();
    let logits;
    for (const id of context) logits = model.step(id);
    const decoder = tokenizer.decoder(context);
    let paused = performance.now();
    while (tokens < length) {
      if (stopping) {
        finish = "stopped";
        break;
      }
      const p = distribution(logits, settings);
      const token = draw(p, random);
      if (token === MODEL.eot_id) {
        finish = "eos";
        break;
      }
      const piece = decoder.push(token);
      addToken(out, piece, Math.log(p[token]), topTokens(p));
      tokens += 1;
      chars += [...piece].length;
      if (tokens < length) logits = model.step(token);
      if (performance.now() - paused > 30) {
        stats();
        await yieldToBrowser();
        paused = performance.now();
      }
    }
    const rest = decoder.flush();
    if (rest) out.appendChild(document.createTextNode(rest));
    chars += [...rest].length;
    setStatus("done");
  } catch (error) {
    setStatus(String(error.message || error), true);
  } finally {
    out.dataset.state = "done";
    stats();
    running = false;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function describe() {
  const shape = `${MODEL.cell.toUpperCase()} ${MODEL.layers}×${MODEL.hidden_size}`;
  const trained = MODEL.trained.step !== undefined ? `, trained ${MODEL.trained.step.toLocaleString()} steps` : "";
  const loss = MODEL.trained.val_loss != null ? `, validation loss ${MODEL.trained.val_loss.toFixed(3)}` : "";
  return (
    `${shape}, ${MODEL.tokenizer_kind} vocabulary of ${MODEL.vocab_size}${trained}${loss}; ${MODEL.weights} weights. ` +
    `Exported by textgen ${MODEL.textgen_version}: it runs in this page (${model.kernel.name}), with no server.`
  );
}

function start() {
  for (const name of Object.keys(SLIDERS)) {
    $(name).addEventListener("input", () => showValue(name));
    showValue(name);
  }
  $("controls").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => (stopping = true));
  explainTokens($("output"), $("tip"));
  try {
    tokenizer = TOKENIZERS[MODEL.tokenizer.kind](MODEL.tokenizer);
    model = new Model(MODEL, base64Bytes($("weights").textContent), !location.hash.includes("nowasm"));
  } catch (error) {
    setStatus(`cannot load the model: ${error.message || error}`, true);
    return;
  }
  $("about").textContent = describe();
  $("generate").disabled = false;
  setStatus("ready");
}

start();
