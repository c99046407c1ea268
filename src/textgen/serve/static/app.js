// textgen playground: streams POST /v1/completions (Server-Sent Events) into the page and colours each
// token by the probability it was drawn with; hovering a token shows the most likely tokens at that step
// (tokens.js, loaded first).
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = {
  temperature: (v) => Number(v).toFixed(2),
  top_k: (v) => (Number(v) === 0 ? "off" : v),
  top_p: (v) => (Number(v) >= 1 ? "off" : Number(v).toFixed(2)),
  max_tokens: (v) => v,
};
const TOP = 5; // alternatives asked for each token
let controller = null;

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  try {
    const health = await fetch("/health").then((r) => r.json());
    const length = $("max_tokens");
    length.max = String(Math.min(health.limits.max_tokens, 2000));
    if (Number(length.value) > Number(length.max)) length.value = length.max;
    showValue("max_tokens");
  } catch {
    // the limits are a convenience: the server checks every request anyway
  }
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key_field").hidden = false;
    setStatus("This server needs an API key: enter it, then press Generate.", true);
    return false;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return false;
  }
  const models = (await response.json()).data.filter((m) => m.kind === "lm");
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.tokenizer ? `${m.id} (${m.tokenizer}, ${m.cell} ${m.hidden_size})` : m.id;
      return option;
    }),
  );
  if (models.some((m) => m.id === chosen)) select.value = chosen;
  setStatus(models.length ? `${models.length} model${models.length > 1 ? "s" : ""} loaded` : "no language models loaded");
  return models.length > 0;
}

function showValue(name) {
  $(`${name}_value`).textContent = SLIDERS[name]($(name).value);
}

async function generate(event) {
  event.preventDefault();
  if (controller) return;
  if (!$("model").value && !(await loadModels())) return;
  const out = $("output");
  const prompt = $("prompt").value;
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  out.replaceChildren(promptSpan);
  out.dataset.state = "running";
  const body = {
    model: $("model").value,
    prompt,
    max_tokens: Number($("max_tokens").value),
    temperature: Number($("temperature").value),
    top_k: Number($("top_k").value),
    top_p: Number($("top_p").value),
    logprobs: TOP,
    stream: true,
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  let tokens = 0;
  let finish = null;
  const stats = () => {
    const seconds = (performance.now() - started) / 1000;
    $("stats").textContent =
      `${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / Math.max(seconds, 1e-3)).toFixed(0)} tokens/s)` +
      (finish ? ` · finished: ${finish}` : "");
  };
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (response.status === 401) $("key_field").hidden = false;
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!block.startsWith("data: ")) continue;
        const data = block.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          const lp = choice.logprobs;
          if (lp && lp.tokens.length) {
            lp.tokens.forEach((t, i) => addToken(out, t, lp.token_logprobs[i], lp.top_logprobs[i]));
            tokens += lp.tokens.length;
          } else if (choice.text) {
            out.appendChild(document.createTextNode(choice.text));
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        stats();
      }
    }
    setStatus("done");
  } catch (error) {
    if (error.name === "AbortError") setStatus("stopped");
    else setStatus(String(error.message || error), true);
  } finally {
    stats();
    out.dataset.state = "done";
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

for (const name of Object.keys(SLIDERS)) {
  $(name).addEventListener("input", () => showValue(name));
  showValue(name);
}
$("controls").addEventListener("submit", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("api_key").addEventListener("change", loadModels);
explainTokens($("output"), $("tip"));
loadModels().catch((error) => setStatus(String(error), true));
