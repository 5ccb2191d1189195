// End-to-end test of the browser demo in Debian's headless Chromium (SwiftShader WebGPU):
// serves www/ and a checkpoint directory on 127.0.0.1, loads the checkpoint on each backend,
// runs fill-mask through the page's form and compares every score with the native NdArray
// results (`modernbert fill-mask --json`'s format), to 1e-3 (2e-2 where the page runs f16).
// Checks the dtype the page reports: f16 exactly when the WebGPU adapter has shader-f16.
// Takes the screenshot of the page. Run by tests/tests/browser_demo.rs (`cargo test`).
//
//   node tests/e2e.mjs --model DIR --native FILE --text TEXT [--backends webgpu,cpu]
//                      [--screenshot FILE] [--bench N] [--expect-error REGEX]
// --bench N: no comparison; runs fill-mask N times per backend and prints each time (ms).
// --expect-error REGEX: the checkpoint must be refused with a message matching REGEX.
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, resolve, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    model: { type: "string" },
    native: { type: "string" },
    text: { type: "string" },
    backends: { type: "string", default: "webgpu,cpu" },
    screenshot: { type: "string" },
    bench: { type: "string" },
    "expect-error": { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "600" },
  },
});
if (!args.model || !args.text || (!args.native && !args.bench && !args["expect-error"])) {
  console.error("usage: node tests/e2e.mjs --model DIR --text TEXT (--native FILE | --bench N | --expect-error REGEX) [...]");
  process.exit(2);
}
const timeout = Number(args.timeout) * 1000;
const www = fileURLToPath(new URL("../www", import.meta.url));
const modelDir = resolve(args.model);
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json" };

// Static files: /model/* from the checkpoint directory, the rest from www/.
const server = createServer(async (request, response) => {
  const path = normalize(decodeURIComponent(new URL(request.url, "http://x").pathname));
  const [root, rest] = path.startsWith("/model/") ? [modelDir, path.slice(7)] : [www, path === "/" ? "index.html" : path];
  const file = join(root, rest);
  try {
    if (!file.startsWith(root) || !(await stat(file)).isFile()) throw new Error("not a file");
    const body = await readFile(file);
    response.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "content-length": body.length });
    response.end(body);
  } catch {
    response.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  // --enable-unsafe-webgpu makes SwiftShader's WebGPU adapter appear (DESIGN.md, "Browser").
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});

let passed = 0;
let failed = 0;
function check(ok, what) {
  if (ok) passed++; else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
}

async function state(page, id) {
  await page.waitForFunction((id) => ["ready", "error"].includes(document.getElementById(id).dataset.state),
    id, { timeout, polling: 200 });
  return page.evaluate((id) => {
    const element = document.getElementById(id);
    return { state: element.dataset.state, text: element.textContent, ms: Number(element.dataset.ms) };
  }, id);
}

async function openPage(backend) {
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") console.log(`  [console] ${m.text()}`); });
  page.on("pageerror", (e) => console.log(`  [page] ${e.message}`));
  const query = new URLSearchParams({ model: "model/", backend, text: args.text });
  await page.goto(`${origin}/?${query}`);
  const loaded = await state(page, "status");
  return { page, loaded };
}

// The dtype the page should run in: f16 on a WebGPU adapter with shader-f16, else f32.
async function expectedDtype(page, backend) {
  if (backend === "cpu") return "f32";
  return page.evaluate(async () => (await navigator.gpu.requestAdapter()).features.has("shader-f16") ? "f16" : "f32");
}

async function predict(page) {
  await page.evaluate(() => { document.getElementById("fill-status").dataset.state = "busy"; });
  await page.click("#fill-form button");
  const result = await state(page, "fill-status");
  const json = await page.textContent("#fill-json");
  return { ...result, masks: result.state === "ready" ? JSON.parse(json) : null };
}

const native = args.native ? JSON.parse(await readFile(args.native, "utf8")).masks : null;
try {
  for (const backend of args.backends.split(",")) {
    const { page, loaded } = await openPage(backend);
    console.log(`${backend}: ${loaded.text} | ${await page.textContent("#adapter")}`);
    if (args["expect-error"]) {
      check(loaded.state === "error" && new RegExp(args["expect-error"]).test(loaded.text),
        `${backend}: checkpoint refused with a message matching /${args["expect-error"]}/`);
      await page.close();
      continue;
    }
    if (loaded.state !== "ready") {
      check(false, `${backend}: checkpoint loads`);
      continue;
    }
    const dtype = await page.evaluate(() => document.getElementById("dtype").dataset.dtype);
    const wanted = await expectedDtype(page, backend);
    check(dtype === wanted, `${backend}: runs in ${dtype} (${wanted} expected for this adapter)`);
    if (args.bench) {
      for (let run = 0; run < Number(args.bench); run++) {
        const result = await predict(page);
        console.log(`${backend}: run ${run + 1}: ${result.text}`);
        if (result.state !== "ready") { failed++; break; }
      }
      continue;
    }
    const result = await predict(page);
    check(result.state === "ready", `${backend}: fill-mask runs (${result.text})`);
    if (result.state !== "ready") continue;
    check(result.masks.length === native.length, `${backend}: ${native.length} [MASK] position(s)`);
    let maxDiff = 0;
    let sameIds = true;
    native.forEach((expected, m) => {
      const got = new Map((result.masks[m] ?? []).map((p) => [p.token_id, p.score]));
      sameIds &&= expected[0].token_id === result.masks[m]?.[0]?.token_id;
      for (const p of expected) {
        maxDiff = Math.max(maxDiff, got.has(p.token_id) ? Math.abs(got.get(p.token_id) - p.score) : Infinity);
      }
    });
    check(sameIds, `${backend}: top-1 token matches native NdArray`);
    const tolerance = dtype === "f16" ? 2e-2 : 1e-3;
    check(maxDiff <= tolerance, `${backend}: top-k scores match native NdArray (max |diff| ${maxDiff.toExponential(2)} <= ${tolerance})`);
    if (backend === args.backends.split(",")[0]) {
      await page.click("#sim-form button");
      const sim = await state(page, "sim-status");
      const cosine = await page.evaluate(() => Number(document.getElementById("sim-status").dataset.cosine));
      check(sim.state === "ready" && cosine > -1.0001 && cosine < 1.0001, `${backend}: similarity runs (${sim.text})`);
      if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    }
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && (passed > 0 || args.bench) ? 0 : 1);
