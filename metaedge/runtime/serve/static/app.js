// metaedge operator page: live view with regions, teaching classes, the class list, history, alerts (the charts:
// charts.js).
// Plain JavaScript, no external code (the page works offline and under CSP default-src 'self').
"use strict";

const $ = (id) => document.getElementById(id);
const page = {
  token: null, info: null, meta: null, events: null, drawing: false, drag: null,
  stats: [], lastStats: null, forgetArmed: null,
};

// ------------------------------------------------------------------------------------------ the API
class ApiError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

function loadToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("metaedge-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  }
  page.token = sessionStorage.getItem("metaedge-token");
}

function tokenQuery() {
  return page.token ? "access_token=" + encodeURIComponent(page.token) : "";
}

async function api(method, path, options = {}) {
  const headers = {};
  if (page.token) headers.Authorization = "Bearer " + page.token;
  let body = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, { method, headers, body });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    if (response.status === 401) showTokenForm();
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, data && data.error);
  }
  return data;
}

function toast(message, error = false) {
  const box = $("toast");
  box.textContent = message;
  box.classList.toggle("error", error);
  box.classList.remove("hidden");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.add("hidden"), error ? 7000 : 3500);
}

function failed(error) {
  toast(error.message || String(error), true);
}

function ago(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------------------------------ token
function showTokenForm() {
  $("token-form").classList.remove("hidden");
  $("token-input").focus();
}

$("token-button").addEventListener("click", () => $("token-form").classList.toggle("hidden"));
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (value) sessionStorage.setItem("metaedge-token", value); else sessionStorage.removeItem("metaedge-token");
  location.reload();
});

// ------------------------------------------------------------------------------------------ server facts
async function loadInfo() {
  const info = await api("GET", "/v1/info");
  page.info = info;
  const backend = info.backend.split(",")[0];
  $("facts").textContent = `${info.bundle.backbone} ${info.bundle.input_shape.join("x")} · ${backend} · ` +
    `${info.server.workers} worker(s) · v${info.version}` + (info.server.read_only ? " · read-only" : "");
  $("who").textContent = `${info.you.name} (${info.you.role})`;
  const operator = info.you.role !== "viewer" && !info.server.read_only;
  for (const id of ["enroll-button", "enroll-files", "adapt-button", "roi-draw", "roi-clear"]) $(id).disabled = !operator;
  if (info.server.source) {
    startLive();
  } else {
    $("live-empty").textContent = "No live source (start the server with --source URI). Classify images below.";
    $("live-empty").classList.remove("hidden");
    $("classify-upload").classList.remove("hidden");
    $("enroll-button").disabled = true;
    for (const id of ["roi-draw", "roi-clear", "enroll-shots", "enroll-every"]) $(id).disabled = true;
  }
}

// ------------------------------------------------------------------------------------------ live view
function startLive() {
  const img = $("live-img");
  img.src = "/v1/live/mjpeg?overlay=0&" + tokenQuery();
  img.addEventListener("load", drawOverlay);
  page.events = new EventSource("/v1/live/events?" + tokenQuery());
  page.events.addEventListener("frame", (event) => onFrame(JSON.parse(event.data)));
  page.events.addEventListener("error", () => { $("live-status").textContent = "reconnecting..."; });
  window.addEventListener("resize", drawOverlay);
}

function describe(prediction) {
  return prediction.unknown ? `unknown (nearest ${prediction.label})` : prediction.label;
}

function onFrame(meta) {
  page.meta = meta;
  $("frame-count").textContent = meta.index !== undefined ? meta.index : "-";
  const status = meta.status === "error" ? `source error: ${meta.error}` : (meta.error || meta.status || "");
  $("live-status").textContent = status;
  if (meta.predict_ms !== null && meta.predict_ms !== undefined) page.predictMs = meta.predict_ms;
  const perFrame = page.predictMs !== undefined ? ` · ${page.predictMs.toFixed(1)} ms/frame` : "";
  $("live-stats").textContent = meta.fps ? `${meta.fps.toFixed(1)} fps${perFrame}` : "";
  const label = $("live-label");
  const preds = meta.predictions || [];
  const topk = $("live-topk");
  topk.replaceChildren();
  if (!preds.length) {
    label.textContent = meta.classes === 0 ? "no classes yet" : "-";
    label.className = "label-big";
  } else {
    const first = preds[0];
    label.textContent = describe(first) + (preds.length > 1 ? ` (+${preds.length - 1} regions)` : "");
    label.className = "label-big " + (first.unknown ? "unknown" : "known");
    for (const item of first.topk) {
      const chip = el("span");
      chip.append(el("b", null, item.label), ` ${item.score.toFixed(3)}`);
      topk.append(chip);
    }
  }
  drawOverlay();
}

function imageScale() {
  const img = $("live-img");
  if (!page.meta || !page.meta.width || !img.clientWidth) return null;
  return img.clientWidth / page.meta.width;
}

function fitImage() {
  // The frame scaled to the box's width (up or down), at most 62% of the window's height; the overlay's scale
  // is then exactly displayed width / frame width.
  const img = $("live-img");
  if (!img.naturalWidth) return;
  const box = $("live-box");
  const scale = Math.min(box.clientWidth / img.naturalWidth, (window.innerHeight * 0.62) / img.naturalHeight);
  img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
}

function drawOverlay() {
  const img = $("live-img");
  const canvas = $("overlay");
  fitImage();
  const ratio = window.devicePixelRatio || 1;
  canvas.style.left = `${img.offsetLeft}px`;
  canvas.style.top = `${img.offsetTop}px`;
  canvas.style.width = `${img.clientWidth}px`;
  canvas.style.height = `${img.clientHeight}px`;
  canvas.width = Math.round(img.clientWidth * ratio);
  canvas.height = Math.round(img.clientHeight * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, canvas.width, canvas.height);
  const scale = imageScale();
  const meta = page.meta;
  if (!scale || !meta) return;
  const preds = meta.predictions || [];
  const boxes = page.drag ? [page.drag] : (meta.roi || []);
  g.font = "600 14px system-ui, sans-serif";
  g.lineWidth = 2.5;
  if (!boxes.length && preds.length) {  // whole frame: a banner
    const p = preds[0];
    g.fillStyle = p.unknown ? "rgba(214,69,69,.85)" : "rgba(31,157,85,.85)";
    g.fillRect(0, 0, img.clientWidth, 26);
    g.fillStyle = "#fff";
    g.fillText(`${describe(p)}  ${p.score.toFixed(3)}`, 8, 18);
  }
  boxes.forEach((box, i) => {
    const [x, y, w, h] = box.map((v) => v * scale);
    const p = page.drag ? null : preds[i];
    const colour = p ? (p.unknown ? "#d64545" : "#1f9d55") : "#f0c419";
    g.strokeStyle = colour;
    g.setLineDash(p ? [] : [6, 4]);
    g.strokeRect(x, y, w, h);
    g.setLineDash([]);
    if (p) {
      const text = `${describe(p)}  ${p.score.toFixed(3)}`;
      const width = g.measureText(text).width + 10;
      g.fillStyle = colour;
      g.fillRect(x, Math.max(0, y - 22), width, 22);
      g.fillStyle = "#fff";
      g.fillText(text, x + 5, Math.max(0, y - 22) + 16);
    }
  });
}

function toImage(event) {
  const scale = imageScale();
  const rect = $("overlay").getBoundingClientRect();
  const x = (event.clientX - rect.left) / scale;
  const y = (event.clientY - rect.top) / scale;
  return [Math.max(0, Math.min(page.meta.width, x)), Math.max(0, Math.min(page.meta.height, y))];
}

$("roi-draw").addEventListener("click", () => {
  page.drawing = !page.drawing;
  $("roi-draw").classList.toggle("active", page.drawing);
  $("live-box").classList.toggle("drawing", page.drawing);
});
$("roi-clear").addEventListener("click", () => setRoi(null));

$("overlay").addEventListener("mousedown", (event) => {
  if (!page.drawing || !imageScale()) return;
  const [x, y] = toImage(event);
  page.dragStart = [x, y];
  page.drag = [Math.round(x), Math.round(y), 1, 1];
});
window.addEventListener("mousemove", (event) => {
  if (!page.dragStart) return;
  const [x, y] = toImage(event);
  const [x0, y0] = page.dragStart;
  page.drag = [Math.round(Math.min(x, x0)), Math.round(Math.min(y, y0)),
               Math.max(1, Math.round(Math.abs(x - x0))), Math.max(1, Math.round(Math.abs(y - y0)))];
  drawOverlay();
});
window.addEventListener("mouseup", () => {
  if (!page.dragStart) return;
  const box = page.drag;
  page.dragStart = null;
  page.drag = null;
  page.drawing = false;
  $("roi-draw").classList.remove("active");
  $("live-box").classList.remove("drawing");
  if (box[2] >= 8 && box[3] >= 8) setRoi(box); else drawOverlay();
});

async function setRoi(box) {
  try {
    await api("PUT", "/v1/live/roi", { json: { roi: box } });
    toast(box ? `region set to ${box.join(", ")}` : "classifying the whole frame");
  } catch (error) { failed(error); }
}

// ------------------------------------------------------------------------------------------ teaching
function enrollLabel() {
  return $("enroll-label").value.trim();
}

function updateEnrollButton() {
  const label = enrollLabel();
  $("enroll-button").textContent = label ? `enroll as "${label}"` : "enroll from live view";
}
$("enroll-label").addEventListener("input", updateEnrollButton);

async function afterChange(message) {
  toast(message);
  await Promise.all([loadClasses(), loadHistory()]);
}

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const label = enrollLabel();
  if (!label) return;
  const shots = Number($("enroll-shots").value) || 5;
  const every = Number($("enroll-every").value) || 0;
  const button = $("enroll-button");
  button.disabled = true;
  $("enroll-status").textContent = `capturing ${shots} frame(s) of the live view...`;
  try {
    const query = `live=${shots}&every=${every}`;
    const result = await api("POST", `/v1/classes/${encodeURIComponent(label)}/shots?${query}`);
    $("enroll-status").textContent = "";
    await afterChange(`${result.new ? "new class" : "more shots for"} "${result.class.label}": ` +
                      `${result.added} shot(s), ${result.class.shots} in all`);
    flashRow(result.class.label);
  } catch (error) {
    $("enroll-status").textContent = "";
    failed(error);
  } finally {
    button.disabled = false;
  }
});

function imagesForm(files, field = "image") {
  const form = new FormData();
  for (const file of files) form.append(field, file, file.name);
  return form;
}

$("enroll-files").addEventListener("change", async (event) => {
  const files = [...event.target.files];
  event.target.value = "";
  const label = enrollLabel();
  if (!files.length) return;
  if (!label) { toast("type the label first", true); return; }
  try {
    const result = await api("POST", `/v1/classes/${encodeURIComponent(label)}/shots`, { body: imagesForm(files) });
    await afterChange(`"${result.class.label}": ${result.added} image(s) enrolled`);
    flashRow(result.class.label);
  } catch (error) { failed(error); }
});

$("classify-files").addEventListener("change", async (event) => {
  const files = [...event.target.files];
  event.target.value = "";
  if (!files.length) return;
  const box = $("classify-result");
  box.replaceChildren();
  try {
    const result = await api("POST", "/v1/predict?k=3", { body: imagesForm(files) });
    result.predictions.forEach((p) => {
      const chip = el("span");
      chip.append(`${files[p.image].name}: `, el("b", null, describe(p)), ` ${p.score.toFixed(3)}`);
      box.append(chip);
    });
  } catch (error) { failed(error); }
});

$("adapt-button").addEventListener("click", async () => {
  const button = $("adapt-button");
  button.disabled = true;
  try {
    const result = await api("POST", "/v1/adapt", { json: { steps: 100 } });
    const r = result.report;
    await afterChange(`head adapted: loss ${r.loss_before.toFixed(3)} -> ${r.loss_after.toFixed(3)}`);
  } catch (error) { failed(error); } finally { button.disabled = false; }
});

// ------------------------------------------------------------------------------------------ classes
function flashRow(label) {
  for (const row of document.querySelectorAll("#classes tbody tr")) {
    if (row.dataset.label === label) row.classList.add("flash");
  }
}

function startRename(row, label) {
  const cell = row.querySelector("td.label");
  const input = el("input");
  input.type = "text";
  input.value = label;
  input.className = "rename-input";
  const save = el("button", "small rename-save", "save");
  const cancel = el("button", "small ghost", "cancel");
  cell.replaceChildren(input, save, cancel);
  input.focus();
  input.select();
  const commit = async () => {
    const next = input.value.trim();
    if (!next || next === label) { loadClasses(); return; }
    try {
      await api("PATCH", `/v1/classes/${encodeURIComponent(label)}`, { json: { label: next } });
      await afterChange(`renamed "${label}" to "${next}"`);
    } catch (error) { failed(error); }
  };
  save.addEventListener("click", commit);
  cancel.addEventListener("click", () => loadClasses());
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") commit();
    if (event.key === "Escape") loadClasses();
  });
  page.editing = true;
}

async function forget(label, button) {
  if (page.forgetArmed !== label) {  // first click arms, the second (within 4 s) forgets
    page.forgetArmed = label;
    button.textContent = "confirm forget";
    button.className = "small danger forget";
    setTimeout(() => {
      if (page.forgetArmed !== label) return;
      page.forgetArmed = null;
      button.textContent = "forget";
      button.className = "small ghost forget";
    }, 4000);
    return;
  }
  page.forgetArmed = null;
  try {
    const result = await api("DELETE", `/v1/classes/${encodeURIComponent(label)}`);
    await afterChange(`forgot "${label}" (${result.shots} shot(s))`);
  } catch (error) { failed(error); }
}

function classRow(c, canChange) {
  const row = el("tr");
  row.dataset.label = c.label;
  const actions = el("td", "actions");
  if (canChange) {
    const rename = el("button", "small ghost rename", "rename");
    rename.addEventListener("click", () => startRename(row, c.label));
    const drop = el("button", "small ghost forget", "forget");
    drop.addEventListener("click", () => forget(c.label, drop));
    actions.append(rename, drop);
  }
  row.append(el("td", "label", c.label), el("td", "num"), el("td", "muted updated"), actions);
  return row;
}

async function loadClasses() {
  // Rows are kept per label and updated in place (a click never lands on a row that was just replaced).
  const data = await api("GET", "/v1/classes");
  const canChange = page.info && page.info.you.role !== "viewer" && !page.info.server.read_only;
  const body = $("classes").querySelector("tbody");
  const existing = new Map([...body.querySelectorAll("tr")].map((row) => [row.dataset.label, row]));
  const rows = data.classes.map((c) => {
    let row = existing.get(c.label);
    if (!row || page.editing) row = classRow(c, canChange);
    row.querySelector("td.num").textContent = String(c.shots);
    const updated = row.querySelector("td.updated");
    updated.textContent = ago(c.updated_at);
    updated.title = c.updated_at;
    return row;
  });
  page.editing = false;
  rows.forEach((row, i) => { if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null); });
  while (body.children.length > rows.length) body.lastElementChild.remove();
  const rejecting = data.open_set && data.open_set.threshold !== null;
  $("class-count").textContent = `(${data.count}${data.adapted ? ", adapted" : ""}` +
    `${rejecting ? ", rejecting unknowns" : ", unknowns not rejected"})`;
  $("class-count").title = data.open_set ? data.open_set.explain : "";
  $("classes-empty").classList.toggle("hidden", data.count > 0);
}

// ------------------------------------------------------------------------------------------ history, alerts
async function loadHistory() {
  const data = await api("GET", "/v1/history?limit=15");
  const list = $("history");
  list.replaceChildren();
  for (const e of data.entries.slice().reverse()) {
    const item = el("li");
    const what = e.op === "rename" && e.detail && e.detail.from ? `${e.detail.from} -> ${e.label}` : (e.label || "");
    const shots = e.op === "enroll" && e.shots ? ` (${e.shots} shot${e.shots > 1 ? "s" : ""})` : "";
    item.append(el("span", "muted", clock(e.at) + " "), el("span", "op", e.op), ` ${what}${shots} `,
                el("span", "muted", `by ${e.actor}`));
    list.append(item);
  }
  if (!data.entries.length) list.append(el("li", "muted", "no changes yet"));
}

async function loadAlerts() {
  const data = await api("GET", "/v1/alerts");
  const rules = $("alert-rules");
  rules.replaceChildren();
  for (const r of data.rules) rules.append(el("li", null, r.rule));
  if (!data.rules.length) rules.append(el("li", "muted", "no alert rules (metaedge serve --alert RULE)"));
  const events = $("alert-events");
  events.replaceChildren();
  for (const e of data.events.slice().reverse().slice(0, 15)) {
    const item = el("li");
    item.append(el("span", "muted", clock(e.at) + " "), el("span", e.state, e.state), ` ${e.rule}`);
    events.append(item);
  }
  const banner = $("alert-banner");
  banner.textContent = data.firing.map((e) => e.message).join(" · ");
  banner.classList.toggle("hidden", !data.firing.length);
}

// ------------------------------------------------------------------------------------------ start
function every(seconds, task) {
  const run = () => task().catch((error) => {
    if (error.status !== 401) $("live-status").textContent = `(${error.message})`;
  });
  run();
  return setInterval(run, seconds * 1000);
}

async function start() {
  loadToken();
  try {
    await loadInfo();
  } catch (error) {
    $("facts").textContent = error.status === 401 ? "a token is needed" : `cannot reach the server: ${error.message}`;
    return;
  }
  updateEnrollButton();
  every(5, () => (page.editing || page.forgetArmed ? Promise.resolve() : loadClasses()));
  every(5, loadHistory);
  every(5, loadAlerts);
  every(2, pollStats);
  drawCharts();
}

start();
