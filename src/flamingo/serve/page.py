"""The demo page: one self-contained HTML document (no external assets, works offline), served at ``/``.

Kept in a Python module so it ships with the package without package-data configuration. The page talks to
the same ``/v1/generate`` endpoint as any client, with ``stream: true``.
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flamingo few-shot demo</title>
<style>
  :root { --bg:#f6f4ef; --card:#fff; --ink:#22252b; --muted:#6b7080; --line:#e2ded5; --accent:#e2577a;
          --c0:#e2577a; --c1:#2f8fd8; --c2:#4aa34a; --c3:#d9921c; --c4:#8b5cc9; --c5:#1fa39a; }
  * { box-sizing: border-box; } [hidden] { display:none !important; }
  body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:center; gap:12px; padding:14px 24px; background:#fff; border-bottom:1px solid var(--line); }
  header h1 { font-size:19px; margin:0; } header .model { color:var(--muted); font-size:13px; }
  #health { margin-left:auto; font-size:13px; color:var(--muted); }
  #health::before { content:"●"; margin-right:6px; color:#bbb; } #health.ok::before { color:#3fae5a; }
  main { display:grid; grid-template-columns:minmax(0,1fr) 360px; gap:20px; padding:20px 24px; max-width:1280px; margin:auto; }
  @media (max-width:900px) { main { grid-template-columns:1fr; } }
  section, aside > div { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px 18px; margin-bottom:18px; }
  h2 { font-size:15px; margin:0 0 10px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  .hint { color:var(--muted); font-size:13px; margin:4px 0 12px; }
  #examples { display:flex; gap:10px; flex-wrap:wrap; }
  .example { flex:1 1 200px; text-align:left; border:1px solid var(--line); background:#fbfaf7; border-radius:10px; padding:10px; cursor:pointer; font:inherit; }
  .example:hover { border-color:var(--accent); } .example b { display:block; } .example span { color:var(--muted); font-size:13px; }
  .example .strip { display:flex; gap:4px; margin-top:6px; } .example .strip img { width:28px; height:28px; border-radius:4px; }
  .card { display:grid; grid-template-columns:auto 92px 1fr auto; gap:12px; align-items:center; padding:10px; border:2px solid var(--line); border-left-width:8px; border-radius:10px; margin-bottom:10px; background:#fff; }
  .card.dragover { background:#fff6f8; }
  .badge { font-weight:600; font-size:12px; padding:3px 8px; border-radius:999px; color:#fff; white-space:nowrap; }
  .pick { position:relative; width:92px; height:92px; border:1px dashed #bbb; border-radius:8px; display:flex; align-items:center; justify-content:center; overflow:hidden; cursor:pointer; color:var(--muted); font-size:12px; text-align:center; background:#faf9f6; }
  .pick img { width:100%; height:100%; object-fit:cover; }
  .pick input[type=file] { position:absolute; inset:0; opacity:0; cursor:pointer; }
  .card .text { width:100%; padding:8px 10px; border:1px solid var(--line); border-radius:8px; font:inherit; }
  .card .kind { font-size:12px; color:var(--muted); }
  .remove { border:none; background:none; font-size:20px; color:#aaa; cursor:pointer; } .remove:hover { color:#d33; }
  .query { border-style:solid; box-shadow:0 0 0 3px #fde6ec; }
  button.secondary { border:1px dashed #bbb; background:none; border-radius:8px; padding:7px 12px; cursor:pointer; font:inherit; color:var(--muted); }
  #preview { font-family:ui-monospace, SFMono-Regular, Menlo, monospace; font-size:13px; line-height:2.1; background:#fbfaf7; border-radius:8px; padding:10px 12px; border:1px solid var(--line); }
  .chip { display:inline-flex; align-items:center; gap:4px; padding:1px 6px 1px 2px; border-radius:6px; color:#fff; font-weight:600; vertical-align:middle; }
  .chip img { width:20px; height:20px; border-radius:4px; }
  .seg { padding:2px 3px; border-radius:4px; border-bottom:3px solid; } .eoc { color:var(--muted); }
  .cursor { color:var(--accent); font-weight:700; }
  label.field { display:block; margin:8px 0; font-size:13px; color:var(--muted); }
  label.field input, label.field select { display:block; width:100%; margin-top:3px; padding:7px 9px; border:1px solid var(--line); border-radius:8px; font:inherit; color:var(--ink); }
  #generate { width:100%; padding:11px; border:none; border-radius:10px; background:var(--accent); color:#fff; font:600 16px system-ui, sans-serif; cursor:pointer; margin-top:6px; }
  #generate:disabled { opacity:.6; cursor:wait; }
  #output { min-height:90px; white-space:pre-wrap; overflow-wrap:anywhere; font-size:17px; padding:10px 12px; background:#fbfaf7; border-radius:8px; border:1px solid var(--line); }
  #output.error { color:#b3261e; background:#fdecea; border-color:#f3c1bb; font-size:14px; }
  #status { font-size:13px; color:var(--muted); margin-top:8px; min-height:18px; }
  .c0{background:var(--c0);border-color:var(--c0)} .c1{background:var(--c1);border-color:var(--c1)} .c2{background:var(--c2);border-color:var(--c2)}
  .c3{background:var(--c3);border-color:var(--c3)} .c4{background:var(--c4);border-color:var(--c4)} .c5{background:var(--c5);border-color:var(--c5)}
  .card.c0,.card.c1,.card.c2,.card.c3,.card.c4,.card.c5,.seg { background:#fff; }
  .seg.c0{background:#fdeef2} .seg.c1{background:#eaf4fc} .seg.c2{background:#edf7ec} .seg.c3{background:#fcf3e4} .seg.c4{background:#f3eefb} .seg.c5{background:#e8f7f5}
</style>
</head>
<body>
<header><h1>Flamingo few-shot demo</h1><span class="model" id="model-name"></span><span id="health">connecting…</span></header>
<main>
  <div>
    <section><h2>Examples</h2><div id="examples"></div></section>
    <section>
      <h2>1 · Build a few-shot prompt</h2>
      <p class="hint">Each demonstration is an image followed by its text (for example <code>Output:a red circle</code>);
        the query ends where the model should continue (for example <code>Output:</code>). Demonstrations are closed with
        <code>&lt;|endofchunk|&gt;</code> and a newline for you.</p>
      <div id="shots"></div>
      <button class="secondary" id="add-shot" type="button">+ Add demonstration</button>
      <div style="height:12px"></div>
      <div id="query-slot"></div>
      <h2 style="margin-top:16px">The prompt as the model reads it</h2>
      <div id="preview"></div>
    </section>
  </div>
  <aside>
    <div>
      <h2>2 · Decoding</h2>
      <label class="field">Method <select id="mode"><option value="greedy">Greedy</option><option value="beam">Beam search</option><option value="sample">Sampling</option></select></label>
      <label class="field">Max new tokens <input id="max-new-tokens" type="number" min="1" value="20"></label>
      <label class="field" id="beams-field">Beams <input id="num-beams" type="number" min="2" max="8" value="3"></label>
      <label class="field" id="temp-field">Temperature <input id="temperature" type="number" min="0.05" max="5" step="0.05" value="0.7"></label>
      <label class="field" id="topp-field">Top-p <input id="top-p" type="number" min="0.05" max="1" step="0.05" value="0.9"></label>
      <button id="generate" type="button">Generate</button>
    </div>
    <div>
      <h2>3 · Answer</h2>
      <div id="output" aria-live="polite"></div>
      <div id="status"></div>
    </div>
  </aside>
</main>
<script>
"use strict";
const EOC = "<|endofchunk|>";
const state = { shots: [{image: null, text: ""}, {image: null, text: ""}], query: {image: null, text: "Output:"} };
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => { const e = document.createElement(tag); Object.assign(e, attrs); e.append(...kids); return e; };

// Image numbers and colours follow the order the images appear in the prompt.
function imageSlots() {
  const slots = new Map(); let n = 0;
  for (const item of [...state.shots, state.query]) if (item.image) slots.set(item, n++);
  return slots;
}
function colourOf(index) { return "c" + (index % 6); }

function readFile(file, item) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { showError("“" + file.name + "” is not an image file."); return; }
  const reader = new FileReader();
  reader.onload = () => { item.image = reader.result; renderCards(); };
  reader.readAsDataURL(file);
}

function card(item, index, isQuery) {
  const slot = imageSlots().get(item);
  const colour = slot === undefined ? "" : colourOf(slot);
  const badge = el("span", {className: "badge " + (colour || "c0"), textContent: slot === undefined ? "no image" : "Image " + (slot + 1)});
  if (slot === undefined) badge.style.background = "#aaa";
  const file = el("input", {type: "file", accept: "image/*", className: "file"});
  file.addEventListener("change", () => readFile(file.files[0], item));
  const pick = el("label", {className: "pick", title: "Choose or drop an image"},
    item.image ? el("img", {src: item.image, alt: "image " + (slot + 1)}) : "Choose or drop an image", file);
  const text = el("input", {type: "text", className: "text", value: item.text,
    placeholder: isQuery ? "Output:" : "Output:a red circle"});
  text.addEventListener("input", () => { item.text = text.value; renderPreview(); });
  const kind = el("div", {className: "kind", textContent: isQuery ? "Query — the model continues this text" : "Demonstration " + (index + 1)});
  const box = el("div", {}, kind, text);
  const remove = el("button", {className: "remove", type: "button", title: "Remove", textContent: isQuery ? "" : "×"});
  if (!isQuery) remove.addEventListener("click", () => { state.shots.splice(index, 1); renderCards(); });
  const c = el("div", {className: "card " + colour + (isQuery ? " query" : " shot"), id: isQuery ? "query" : "shot-" + index},
    badge, pick, box, remove);
  c.addEventListener("dragover", (e) => { e.preventDefault(); c.classList.add("dragover"); });
  c.addEventListener("dragleave", () => c.classList.remove("dragover"));
  c.addEventListener("drop", (e) => { e.preventDefault(); c.classList.remove("dragover"); readFile(e.dataTransfer.files[0], item); });
  return c;
}

function renderCards() {
  $("#shots").replaceChildren(...state.shots.map((s, i) => card(s, i, false)));
  $("#query-slot").replaceChildren(card(state.query, 0, true));
  renderPreview();
}

function renderPreview() {
  const slots = imageSlots(); const parts = [];
  for (const item of [...state.shots, state.query]) {
    if (item !== state.query && !item.image && !item.text) continue;
    const slot = slots.get(item); const colour = slot === undefined ? "" : colourOf(slot);
    if (slot !== undefined) parts.push(el("span", {className: "chip " + colour}, el("img", {src: item.image, alt: ""}), "<image> " + (slot + 1)));
    if (item.text) parts.push(el("span", {className: "seg " + colour, textContent: item.text}));
    if (item === state.query) parts.push(el("span", {className: "cursor", textContent: " ▍model continues here"}));
    else parts.push(el("span", {className: "eoc", textContent: EOC + "⏎"}), el("br"));
  }
  $("#preview").replaceChildren(...parts);
}

function promptParts() {
  const parts = [];
  for (const item of [...state.shots, state.query]) {
    if (item !== state.query && !item.image && !item.text) continue;  // an empty demonstration adds nothing
    if (item.image) parts.push({type: "image", base64: item.image});
    const text = item === state.query ? item.text : item.text + EOC + "\n";
    if (text) parts.push({type: "text", text});
  }
  return parts;
}

function settings() {
  const mode = $("#mode").value; const s = {max_new_tokens: Number($("#max-new-tokens").value) || 20};
  if (mode === "beam") s.num_beams = Number($("#num-beams").value) || 3;
  if (mode === "sample") { s.temperature = Number($("#temperature").value) || 0.7; s.top_p = Number($("#top-p").value) || 1; }
  return s;
}
function showMode() {
  const mode = $("#mode").value;
  $("#beams-field").hidden = mode !== "beam"; $("#temp-field").hidden = mode !== "sample"; $("#topp-field").hidden = mode !== "sample";
}
function showError(message) { const out = $("#output"); out.className = "error"; out.textContent = message; $("#status").textContent = "error"; }

async function generate() {
  const out = $("#output"), status = $("#status"), button = $("#generate");
  if (!state.query.image && !state.query.text) { showError("Give the query an image or some text."); return; }
  out.className = ""; out.textContent = ""; status.textContent = "waiting for the model…"; button.disabled = true;
  document.body.dataset.state = "running"; document.body.dataset.done = "0";
  try {
    const response = await fetch("/v1/generate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({prompt: promptParts(), stream: true, ...settings()})});
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || ("HTTP " + response.status));
    }
    await readEvents(response, out, status);
  } catch (err) { showError(err.message); }
  finally { button.disabled = false; document.body.dataset.state = "idle"; }
}

// Server-sent events over fetch: "message" pieces, then "done" (usage) or "error".
async function readEvents(response, out, status) {
  const reader = response.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
  status.textContent = "generating…";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [, "message"])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [, "{}"])[1]);
      if (event === "message") out.textContent += data.text;
      else if (event === "done") {
        out.textContent = data.text || "(the model stopped at once: empty answer)";
        const u = data.usage;
        status.textContent = `done · ${u.completion_tokens} new tokens · ${u.prompt_tokens} prompt tokens · ${u.images} images · ${u.total_ms} ms`;
        document.body.dataset.done = "1";
      } else if (event === "error") throw new Error(data.error.message);
    }
  }
}

function loadExample(example) {
  state.shots = example.shots.map((s) => ({image: s.image, text: s.text}));
  state.query = {image: example.query.image, text: example.query.text};
  const s = example.settings; $("#mode").value = s.mode; $("#max-new-tokens").value = s.max_new_tokens;
  if (s.num_beams) $("#num-beams").value = s.num_beams;
  if (s.temperature) $("#temperature").value = s.temperature;
  if (s.top_p) $("#top-p").value = s.top_p;
  showMode(); renderCards(); $("#output").textContent = ""; $("#status").textContent = "example loaded: press Generate";
}

async function init() {
  renderCards(); showMode();
  $("#add-shot").addEventListener("click", () => { state.shots.push({image: null, text: ""}); renderCards(); });
  $("#generate").addEventListener("click", generate);
  $("#mode").addEventListener("change", showMode);
  try {
    const health = await (await fetch("/health")).json();
    $("#model-name").textContent = health.model; $("#health").textContent = "ready"; $("#health").className = "ok";
  } catch (err) { $("#health").textContent = "server unreachable"; }
  const examples = await (await fetch("/v1/examples")).json();
  $("#examples").replaceChildren(...examples.map((ex) => {
    const strip = el("div", {className: "strip"}, ...[...ex.shots, ex.query].map((s) => el("img", {src: s.image, alt: ""})));
    const b = el("button", {className: "example", type: "button"}, el("b", {textContent: ex.title}), el("span", {textContent: ex.description}), strip);
    b.addEventListener("click", () => loadExample(ex));
    return b;
  }));
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""
