// Drives the wasm module (pkg/, written by ../build.sh): loads a checkpoint, runs fill-mask
// and sentence similarity, shows progress, the backend and the time of each inference.
// Query parameters: ?model=<directory URL>&backend=auto|webgpu|cpu loads at once.
import init, { Demo } from "./pkg/modernbert_web_demo.js";

const $ = (id) => document.getElementById(id);
const FILES = ["config.json", "model.safetensors", "tokenizer.json"];
let demo = null;

function say(element, text, state) {
  element.textContent = text;
  element.dataset.state = state;
}

function message(error) {
  // A Rust panic surfaces as a bare RuntimeError; its text went to the console.
  if (error instanceof WebAssembly.RuntimeError) {
    return `internal error (${error.message}); see the browser console. Reload the page.`;
  }
  return error?.message ?? String(error);
}

function progress(done, total) {
  const bar = $("progress");
  bar.hidden = false;
  bar.max = total || 1;
  bar.value = done;
}

async function fetchBytes(url, onChunk) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onChunk(value.length, total);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

// WebGPU only when the browser gives an adapter; wgpu cannot recover from a missing one.
async function chooseBackend() {
  const wanted = $("backend").value;
  if (wanted === "cpu") return { backend: "cpu", note: "" };
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  if (adapter) {
    const info = adapter.info ?? {};
    const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ");
    return { backend: "webgpu", note: name ? ` — adapter: ${name}` : "" };
  }
  if (wanted === "webgpu") throw new Error("this browser has no WebGPU adapter (navigator.gpu.requestAdapter() gave none)");
  return { backend: "cpu", note: " — no WebGPU adapter in this browser, fell back to the CPU" };
}

async function load(getFiles) {
  const status = $("status");
  demo = null;
  for (const button of document.querySelectorAll("#fill-form button, #sim-form button")) button.disabled = true;
  try {
    const { backend, note } = await chooseBackend();
    const files = await getFiles();
    say(status, `Building the model on ${backend === "webgpu" ? "WebGPU" : "the CPU"}…`, "busy");
    const started = performance.now();
    demo = await Demo.load(backend, new TextDecoder().decode(files["config.json"]),
      files["model.safetensors"], files["tokenizer.json"]);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("adapter").textContent = demo.backend() + note;
    // f16 where the WebGPU adapter has shader-f16 (half the memory), else f32.
    const dtype = demo.dtype();
    $("dtype").dataset.dtype = dtype;
    $("dtype").textContent = backend === "cpu" ? dtype
      : `${dtype} (the adapter ${dtype === "f16" ? "has" : "has no"} shader-f16)`;
    $("summary").textContent = demo.summary();
    $("info").hidden = false;
    const compiles = backend === "webgpu" ? " The first inference also compiles the WebGPU kernels." : "";
    say(status, `Loaded in ${seconds} s.${compiles}`, "ready");
    for (const button of document.querySelectorAll("#fill-form button, #sim-form button")) button.disabled = false;
  } catch (error) {
    say(status, message(error), "error");
  }
}

function fromUrl(base) {
  const dir = base.endsWith("/") ? base : base + "/";
  return async () => {
    const received = {};
    const totals = {};
    const update = () => {
      const done = Object.values(received).reduce((a, b) => a + b, 0);
      const total = Object.values(totals).reduce((a, b) => a + b, 0);
      progress(done, total);
      say($("status"), `Downloading ${dir}: ${(done / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MiB`, "busy");
    };
    const entries = await Promise.all(FILES.map(async (name) => {
      received[name] = 0;
      const bytes = await fetchBytes(dir + name, (n, total) => {
        received[name] += n;
        totals[name] = total;
        update();
      });
      return [name, bytes];
    }));
    return Object.fromEntries(entries);
  };
}

function fromFiles(list) {
  return async () => {
    const byName = new Map([...list].map((file) => [file.name, file]));
    const missing = FILES.filter((name) => !byName.has(name));
    if (missing.length) throw new Error(`missing ${missing.join(", ")} (pick or drop all three files of a checkpoint directory)`);
    const total = FILES.reduce((sum, name) => sum + byName.get(name).size, 0);
    let done = 0;
    const files = {};
    for (const name of FILES) {
      say($("status"), `Reading ${name}…`, "busy");
      files[name] = new Uint8Array(await byName.get(name).arrayBuffer());
      done += byName.get(name).size;
      progress(done, total);
    }
    return files;
  };
}

function escape(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

async function fillMask(event) {
  event.preventDefault();
  if (!demo) return;
  const status = $("fill-status");
  const text = $("fill-text").value;
  try {
    const tokens = demo.count_tokens(text);
    say(status, `Running on ${tokens} tokens…`, "busy");
    const started = performance.now();
    const json = await demo.fill_mask(text, Number($("top-k").value));
    const ms = performance.now() - started;
    const masks = JSON.parse(json);
    $("fill-json").textContent = json;
    $("fill-result").innerHTML = masks.map((candidates, i) => `
      <table><caption>[MASK] ${i + 1}</caption>
      <tr><th>token</th><th>id</th><th>score</th><th></th></tr>
      ${candidates.map((p) => `<tr><td><code>${escape(JSON.stringify(p.token))}</code></td><td>${p.token_id}</td>
        <td class="score">${p.score.toFixed(4)}</td><td><span class="bar" style="width:${(p.score * 12).toFixed(2)}rem"></span></td></tr>`).join("")}
      </table>`).join("");
    status.dataset.ms = ms.toFixed(1);
    say(status, `${tokens} tokens, ${ms.toFixed(1)} ms per inference`, "ready");
  } catch (error) {
    say(status, message(error), "error");
  }
}

async function similarity(event) {
  event.preventDefault();
  if (!demo) return;
  const status = $("sim-status");
  try {
    say(status, "Embedding both sentences…", "busy");
    const started = performance.now();
    const result = JSON.parse(await demo.similarity($("sim-a").value, $("sim-b").value));
    const ms = performance.now() - started;
    status.dataset.cosine = result.cosine;
    status.dataset.ms = ms.toFixed(1);
    say(status, `cosine similarity ${result.cosine.toFixed(4)} (mean-pooled, ${result.tokens.join(" + ")} tokens, ${ms.toFixed(1)} ms)`, "ready");
  } catch (error) {
    say(status, message(error), "error");
  }
}

function wireDropZone() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    load(fromFiles(event.dataTransfer.files));
  });
  $("files").addEventListener("change", (event) => load(fromFiles(event.target.files)));
}

async function main() {
  await init();
  wireDropZone();
  $("url-form").addEventListener("submit", (event) => { event.preventDefault(); load(fromUrl($("url").value)); });
  $("fill-form").addEventListener("submit", fillMask);
  $("sim-form").addEventListener("submit", similarity);
  const params = new URLSearchParams(location.search);
  if (params.get("backend")) $("backend").value = params.get("backend");
  if (params.get("text")) $("fill-text").value = params.get("text");
  if (params.get("model")) {
    $("url").value = params.get("model");
    await load(fromUrl(params.get("model")));
  }
}

main().catch((error) => say($("status"), message(error), "error"));
