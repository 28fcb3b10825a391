// twoshot annotate: the page. Plain JavaScript and canvas, no build step.
// Masks are Uint8Arrays of object ids (one byte per pixel, row order), exchanged with the
// server as raw bytes; every edit is saved at once, based on the version it started from.
"use strict";

const S = {
  info: null, videos: [], video: null, frame: 0,
  mask: null, version: "", img: null, maskCanvas: null, propCanvas: null, prop: null,
  tool: "brush", brush: 12, object: 1, objects: [],
  zoom: 1, tx: 0, ty: 0,
  history: new Map(), versions: new Map(), suggested: new Set(),
  job: { state: "none", ready: new Set() }, propCache: new Map(),
  overlay: true, opacity: 0.5, polygon: [], drag: null, hover: null, spaceDown: false,
  saveQueue: [], saving: false, poll: null, loadToken: 0,
  // Per frame ("video/frame"): what the toolbar says about its saving.
  saveStates: new Map(),
  // Per video, the object ids the server knows (a saved mask may only show these).
  registered: new Map(),
  hidden: new Set(), locked: new Set(), onlyBackground: false,
  busy: new Map(), playing: null,
};
const TOKEN = document.querySelector('meta[name="twoshot-token"]').content;
const LOW_CONFIDENCE = Math.round(0.6 * 255);
// Strategies that propagate with the loaded checkpoint: they add k frames to the labeled ones.
const MODEL_STRATEGY_TITLES = {
  uncertainty: "k more frames where the propagation from the labeled frames is least confident",
  disagreement: "k more frames where two propagations from the labeled frames disagree most",
};
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

// ------------------------------------------------------------------------------------------
// Server

async function api(method, url, body, headers) {
  // The server refuses changes that carry neither the page's origin nor its token.
  if (method !== "GET") headers = { ...(headers || {}), "X-Twoshot-Token": TOKEN };
  const response = await fetch(url, { method, body, headers });
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}
const getJSON = async (url) => (await api("GET", url)).json();
const sendJSON = async (method, url, obj) =>
  (await api(method, url, JSON.stringify(obj || {}), { "Content-Type": "application/json" })).json();
const videoUrl = (name) => `/api/videos/${encodeURIComponent(name)}`;

// Busy state: each running request shows its label until it answers (success or not).
async function busy(label, work) {
  const id = Symbol(label);
  S.busy.set(id, label);
  renderBusy();
  try { return await work(); } finally { S.busy.delete(id); renderBusy(); }
}
function renderBusy() {
  $("busy").textContent = [...S.busy.values()].join(", ");
  const running = new Set(S.busy.values());
  $("export").disabled = running.has("exporting…");
  $("suggest").disabled = running.has("suggesting…");
}
const frameUrl = (name, index) => `${videoUrl(name)}/frames/${index}`;

function showMessage(text, kind) {
  const el = $("message");
  el.textContent = text;
  el.className = kind || "";
  el.style.display = text ? "block" : "none";
  if (text) {
    clearTimeout(showMessage.timer);
    showMessage.timer = setTimeout(() => { el.style.display = "none"; }, kind === "info" ? 3000 : 8000);
  }
}

// ------------------------------------------------------------------------------------------
// Loading

async function init() {
  S.info = await getJSON("/api/info");
  $("dataset").textContent = `${S.info.data} (${S.info.kind})`;
  $("budget-path").textContent = `budget: ${S.info.budget}`;
  $("export-path").textContent = `to ${S.info.export}`;
  for (const name of S.info.strategies) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    if (MODEL_STRATEGY_TITLES[name]) option.title = MODEL_STRATEGY_TITLES[name];
    if (name === "uniform") option.selected = true;
    $("suggest-strategy").appendChild(option);
  }
  $("propagate").disabled = !S.info.propagation;
  if (!S.info.propagation) $("progress").textContent = "no checkpoint loaded";
  await refreshVideos();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = S.videos.find((v) => v.name === wanted) || S.videos[0];
  if (first) await openVideo(first.name);
  window.annotator.ready = true;
}

async function refreshVideos() {
  S.videos = (await getJSON("/api/videos")).videos;
  const list = $("videos");
  list.innerHTML = "";
  for (const v of S.videos) {
    const li = document.createElement("li");
    li.dataset.name = v.name;
    li.innerHTML = `<span class="name"></span><span class="count"></span>`;
    li.querySelector(".name").textContent = v.name;
    li.querySelector(".count").textContent = `${v.labeled} / ${v.frames}`;
    li.title = `${v.labeled} labeled of ${v.frames} frames`;
    if (S.video && v.name === S.video.name) li.classList.add("current");
    li.onclick = () => openVideo(v.name);
    list.appendChild(li);
  }
}

async function openVideo(name) {
  S.video = await getJSON(videoUrl(name));
  location.hash = encodeURIComponent(name);
  stopPlaying();
  S.objects = S.video.objects;
  S.registered.set(name, new Set(S.objects.map((o) => o.id)));
  S.hidden = new Set();
  S.locked = new Set();
  S.object = S.objects.length ? S.objects[0].id : nextObjectId();
  S.suggested = new Set(S.video.suggested);
  S.propCache = new Map();
  S.job = { state: "none", ready: new Set() };
  S.maskCanvas = makeCanvas(S.video.width, S.video.height);
  S.propCanvas = makeCanvas(S.video.width, S.video.height);
  for (const li of $("videos").children) li.classList.toggle("current", li.dataset.name === name);
  buildTimeline();
  $("scrub").max = S.video.frames - 1;
  renderObjects();
  fitView();
  $("progress").textContent = S.info.propagation ? "not propagated yet" : "no checkpoint loaded";
  await loadFrame(S.video.labeled.length ? S.video.labeled[0] : 0);
  if (S.info.propagation) await pollJob();
}

function makeCanvas(width, height) {
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  return c;
}

async function loadFrame(index) {
  if (!S.video) return;
  index = Math.max(0, Math.min(S.video.frames - 1, index));
  const token = ++S.loadToken;
  const name = S.video.name;
  S.polygon = [];
  const img = new Image();
  const imageLoaded = new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; });
  img.src = `${frameUrl(name, index)}/image`;
  let maskResponse, data;
  try {
    maskResponse = await api("GET", `${frameUrl(name, index)}/mask`);
    data = new Uint8Array(await maskResponse.arrayBuffer());
    await imageLoaded;
  } catch (e) {
    showMessage(`cannot open frame ${index}: ${e.message || "image not readable"}`);
    return;
  }
  if (token !== S.loadToken) return; // another frame was asked for meanwhile
  S.frame = index;
  S.img = img;
  S.mask = data;
  S.version = maskResponse.headers.get("X-Mask-Version") || "";
  S.versions.set(key(), S.version);
  for (const id of new Set(data)) if (id) ensureObject(id);
  S.prop = null;
  renderMask();
  await loadPropagated();
  updateFrameLabel();
  updateTimeline();
  updateSaveState();
  $("scrub").value = index;
  draw();
}

async function loadPropagated() {
  S.prop = null;
  $("accept").disabled = true;
  if (!S.job.ready.has(S.frame)) { renderProp(); return; }
  const cacheKey = `${S.job.id}/${S.frame}`;
  let entry = S.propCache.get(cacheKey);
  if (!entry) {
    try {
      const response = await api("GET", `${frameUrl(S.video.name, S.frame)}/propagated`);
      const bytes = new Uint8Array(await response.arrayBuffer());
      const n = S.video.width * S.video.height;
      entry = { labels: bytes.subarray(0, n), confidence: bytes.subarray(n, 2 * n) };
      S.propCache.set(cacheKey, entry);
    } catch (e) { entry = null; }
  }
  S.prop = entry;
  if (entry) for (const id of idsOf(entry.labels)) ensureObject(id);
  renderProp();
  $("accept").disabled = !entry;
}

const key = (frame) => `${S.video.name}/${frame === undefined ? S.frame : frame}`;

// The object ids (non-zero values) of a mask, ascending.
function idsOf(mask) {
  const seen = new Uint8Array(256);
  for (let i = 0; i < mask.length; i++) seen[mask[i]] = 1;
  const ids = [];
  for (let id = 1; id < 256; id++) if (seen[id]) ids.push(id);
  return ids;
}

// A new object's id: above every id on the video's masks (on disk, in this frame, in its
// propagation) and every object listed, so that it can never merge into an existing one.
function nextObjectId() {
  let top = S.video.max_object_id || 0;
  for (const o of S.objects) top = Math.max(top, o.id);
  if (S.mask) for (const id of idsOf(S.mask)) top = Math.max(top, id);
  if (S.prop) for (const id of idsOf(S.prop.labels)) top = Math.max(top, id);
  return top + 1;
}

function updateSaveState() {
  $("save-state").textContent = (S.video && S.saveStates.get(key())) || "";
}

// ------------------------------------------------------------------------------------------
// Rendering

function colorOf(id) {
  const obj = S.objects.find((o) => o.id === id);
  const hex = obj ? obj.color : S.video.palette[id];
  return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
}

function colorTable() {
  const table = [];
  for (let id = 0; id < 256; id++) table.push(id ? colorOf(id) : [0, 0, 0]);
  return table;
}

function renderMask() {
  const { width, height } = S.video;
  const image = new ImageData(width, height);
  const px = image.data;
  const table = colorTable();
  const alpha = Math.round(255 * Math.max(0.25, S.opacity));
  for (let i = 0; i < S.mask.length; i++) {
    const id = S.mask[i];
    if (!id || S.hidden.has(id)) continue;
    const c = table[id];
    // Boundaries in full colour so that thin structures stay visible.
    const x = i % width;
    const edge = (x > 0 && S.mask[i - 1] !== id) || (x < width - 1 && S.mask[i + 1] !== id)
      || (i >= width && S.mask[i - width] !== id) || (i + width < S.mask.length && S.mask[i + width] !== id);
    px[4 * i] = c[0]; px[4 * i + 1] = c[1]; px[4 * i + 2] = c[2];
    px[4 * i + 3] = edge ? 255 : alpha;
  }
  S.maskCanvas.getContext("2d").putImageData(image, 0, 0);
  void height;
}

function renderProp() {
  const { width, height } = S.video;
  const c = S.propCanvas.getContext("2d");
  c.clearRect(0, 0, width, height);
  if (!S.prop) return;
  const image = new ImageData(width, height);
  const px = image.data;
  const table = colorTable();
  const alpha = Math.round(255 * S.opacity);
  const { labels, confidence } = S.prop;
  for (let i = 0; i < labels.length; i++) {
    const id = labels[i];
    const x = i % width;
    const y = (i / width) | 0;
    if (confidence[i] < LOW_CONFIDENCE && (x + y) % 6 === 0) {
      // Hatching marks pixels the model is unsure of, object or background.
      px[4 * i] = 255; px[4 * i + 1] = 235; px[4 * i + 2] = 0; px[4 * i + 3] = 200;
    } else if (id && !S.hidden.has(id)) {
      const col = table[id];
      px[4 * i] = col[0]; px[4 * i + 1] = col[1]; px[4 * i + 2] = col[2]; px[4 * i + 3] = alpha;
    }
  }
  c.putImageData(image, 0, 0);
}

function draw() {
  const rect = canvas.getBoundingClientRect();
  if (canvas.width !== Math.round(rect.width) || canvas.height !== Math.round(rect.height)) {
    canvas.width = Math.round(rect.width);
    canvas.height = Math.round(rect.height);
  }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!S.img || !S.video) return;
  ctx.setTransform(S.zoom, 0, 0, S.zoom, S.tx, S.ty);
  ctx.imageSmoothingEnabled = S.zoom < 1;
  ctx.drawImage(S.img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  const labeledHere = S.video.labeled.includes(S.frame);
  if (S.overlay && S.prop && !labeledHere) ctx.drawImage(S.propCanvas, 0, 0);
  ctx.drawImage(S.maskCanvas, 0, 0);
  ctx.lineWidth = 1.5 / S.zoom;
  if (S.polygon.length) {
    ctx.strokeStyle = "#fff";
    ctx.beginPath();
    S.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (S.hover) ctx.lineTo(S.hover[0], S.hover[1]);
    ctx.stroke();
  }
  if (S.drag && S.drag.kind === "box") {
    ctx.strokeStyle = "#ff0";
    const [x0, y0] = S.drag.start;
    const [x1, y1] = S.drag.end;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  if (S.hover && (S.tool === "brush" || S.tool === "eraser")) {
    ctx.strokeStyle = "rgba(255,255,255,.8)";
    ctx.beginPath();
    ctx.arc(S.hover[0], S.hover[1], S.brush / 2, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function fitView() {
  const rect = canvas.getBoundingClientRect();
  if (!S.video || !rect.width) return;
  S.zoom = Math.min(rect.width / S.video.width, rect.height / S.video.height) * 0.96;
  S.tx = (rect.width - S.video.width * S.zoom) / 2;
  S.ty = (rect.height - S.video.height * S.zoom) / 2;
  S.fitted = true;
  draw();
}

function zoomAt(factor, cx, cy) {
  const zoom = Math.max(0.05, Math.min(64, S.zoom * factor));
  S.tx = cx - ((cx - S.tx) * zoom) / S.zoom;
  S.ty = cy - ((cy - S.ty) * zoom) / S.zoom;
  S.zoom = zoom;
  S.fitted = false;
  draw();
}

// ------------------------------------------------------------------------------------------
// Timeline, objects, labels

function buildTimeline() {
  const timeline = $("timeline");
  timeline.innerHTML = "";
  for (let i = 0; i < S.video.frames; i++) {
    const div = document.createElement("div");
    div.className = "thumb";
    div.dataset.frame = i;
    div.title = `frame ${i} (${S.video.frame_names[i]})`;
    div.innerHTML = `<div class="marks"><span class="mark l" title="labeled"></span>`
      + `<span class="mark s" title="suggested"></span><span class="mark p" title="propagated"></span>`
      + `<span class="mark a" title="annotation on disk, not in the budget"></span></div>`
      + `<img loading="lazy" alt=""><div class="n">${i}</div>`;
    div.onclick = () => loadFrame(i);
    timeline.appendChild(div);
  }
}

function updateTimeline() {
  const labeled = new Set(S.video.labeled);
  const annotated = new Set(S.video.annotated);
  for (const div of $("timeline").children) {
    const i = Number(div.dataset.frame);
    div.classList.toggle("current", i === S.frame);
    div.classList.toggle("labeled", labeled.has(i));
    div.classList.toggle("annotated", annotated.has(i) && !labeled.has(i));
    div.classList.toggle("suggested", S.suggested.has(i));
    div.classList.toggle("propagated", S.job.ready.has(i) && !labeled.has(i));
    // The thumbnail shows the frame's saved or propagated mask: fetched again when that changes.
    const stamp = labeled.has(i) ? `l${S.versions.get(key(i)) || ""}` : S.job.ready.has(i) ? `p${S.job.id}` : "";
    if (div.dataset.stamp !== stamp) {
      div.dataset.stamp = stamp;
      div.querySelector("img").src = `${frameUrl(S.video.name, i)}/thumb${stamp ? `?masks=1&v=${encodeURIComponent(stamp)}` : ""}`;
    }
    if (i === S.frame) div.scrollIntoView({ block: "nearest", inline: "nearest" });
  }
}

function updateFrameLabel() {
  const labeled = S.video.labeled.includes(S.frame);
  for (const id of ["propagate-forward", "propagate-backward"]) $(id).disabled = !(labeled && S.info.propagation);
  $("frame-label").textContent = `${S.video.name} — frame ${S.frame} of 0–${S.video.frames - 1} `
    + `(${S.video.frame_names[S.frame]})${labeled ? " · labeled" : ""}`
    + `${S.prop && !labeled ? " · propagated" : ""}`;
}

// List object ``id`` in the Objects bar (the server learns it before a mask showing it is saved).
function ensureObject(id) {
  if (S.objects.some((o) => o.id === id)) return;
  S.objects.push({ id, name: `object ${id}`, color: S.video.palette[id] });
  S.objects.sort((a, b) => a.id - b.id);
  renderObjects();
}

function renderObjects() {
  const list = $("objects");
  list.innerHTML = "";
  S.objects.forEach((obj, n) => {
    const li = document.createElement("li");
    li.dataset.id = obj.id;
    li.classList.toggle("current", obj.id === S.object);
    li.classList.toggle("hidden", S.hidden.has(obj.id));
    li.innerHTML = `<span class="key">${n < 9 ? n + 1 : ""}</span><input type="color">`
      + `<input type="text"><button class="toggle hide" title="Hide this object on the canvas">hide</button>`
      + `<button class="toggle lock" title="Lock: no tool changes this object's pixels">lock</button>`
      + `<button class="del" title="Delete this object from every labeled frame">×</button>`;
    const hide = li.querySelector(".hide");
    const lock = li.querySelector(".lock");
    hide.classList.toggle("on", S.hidden.has(obj.id));
    lock.classList.toggle("on", S.locked.has(obj.id));
    hide.onclick = () => { toggle(S.hidden, obj.id); renderObjects(); renderMask(); renderProp(); draw(); };
    lock.onclick = () => { toggle(S.locked, obj.id); renderObjects(); };
    const color = li.querySelector("input[type=color]");
    const text = li.querySelector("input[type=text]");
    color.value = obj.color;
    text.value = obj.name;
    li.onclick = (e) => { if (e.target === li || e.target.className === "key") selectObject(obj.id); };
    text.onfocus = () => selectObject(obj.id, false);
    text.onchange = () => saveObject(obj, { name: text.value });
    color.oninput = () => { obj.color = color.value; renderMask(); renderProp(); draw(); };
    color.onchange = () => saveObject(obj, { color: color.value });
    li.querySelector(".del").onclick = () => deleteObject(obj);
    list.appendChild(li);
  });
}

function toggle(set, id) { if (set.has(id)) set.delete(id); else set.add(id); }

function selectObject(id, rerender = true) {
  S.object = id;
  for (const li of $("objects").children) li.classList.toggle("current", Number(li.dataset.id) === id);
  if (rerender) draw();
}

async function saveObject(obj, change, video = S.video.name) {
  Object.assign(obj, change);
  try {
    const saved = await sendJSON("PUT", `${videoUrl(video)}/objects/${obj.id}`, { name: obj.name, color: obj.color });
    Object.assign(obj, saved);
    S.registered.get(video).add(obj.id);
    return true;
  } catch (e) { showMessage(`object not saved: ${e.message}`); return false; }
}

async function addObject() {
  const id = nextObjectId();
  if (id > S.video.max_objects) {
    showMessage(`at most ${S.video.max_objects} objects per video (twoshot annotate --max-objects)`);
    return;
  }
  const obj = { id, name: `object ${id}`, color: S.video.palette[id] };
  S.objects.push(obj);
  renderObjects();
  selectObject(id);
  await saveObject(obj, {});
}

async function deleteObject(obj) {
  if (!confirm(`Delete ${obj.name} from every labeled frame of ${S.video.name}?`)) return;
  try {
    await flushSaves();
    await api("DELETE", `${videoUrl(S.video.name)}/objects/${obj.id}`);
    S.objects = S.objects.filter((o) => o.id !== obj.id);
    S.registered.get(S.video.name).delete(obj.id);
    S.history = new Map();
    const details = await getJSON(videoUrl(S.video.name));
    S.video.labeled = details.labeled;
    if (S.object === obj.id) S.object = S.objects.length ? S.objects[0].id : nextObjectId();
    renderObjects();
    await loadFrame(S.frame);
    refreshVideos();
  } catch (e) { showMessage(`delete failed: ${e.message}`); }
}

// ------------------------------------------------------------------------------------------
// Editing

function history() {
  if (!S.history.has(key())) S.history.set(key(), { undo: [], redo: [] });
  return S.history.get(key());
}

// Before the first edit of a propagated frame: the edit starts from the propagated mask that
// the overlay shows (an unlabeled frame's own mask is empty), not from nothing.
function startEdit() {
  const before = S.mask.slice();
  const labeled = S.video.labeled.includes(S.frame);
  if (!labeled && S.prop && !idsOf(S.mask).length) {
    S.mask = S.prop.labels.slice();
    for (const id of idsOf(S.mask)) ensureObject(id);
  }
  return before;
}

// Whether a tool painting ``value`` may change pixel ``i``: never a locked object's pixel;
// with "only on background", only background and the current object's pixels.
function writable(i, value) {
  const v = S.mask[i];
  if (S.locked.has(v)) return false;
  if (S.onlyBackground && value !== 0) return v === 0 || v === value;
  return true;
}

function commit(before) {
  const h = history();
  h.undo.push(before);
  if (h.undo.length > 100) h.undo.shift();
  h.redo = [];
  for (const id of idsOf(S.mask)) ensureObject(id);
  renderMask();
  draw();
  queueSave();
}

// The propagated mask of this frame, as it is, becomes its label.
function acceptPropagated() {
  if (!S.prop || !S.mask) return;
  const before = S.mask.slice();
  S.mask = S.prop.labels.slice();
  commit(before);
}

function undo() {
  const h = history();
  if (!h.undo.length) return;
  h.redo.push(S.mask.slice());
  S.mask = h.undo.pop();
  renderMask(); draw(); queueSave();
}

function redo() {
  const h = history();
  if (!h.redo.length) return;
  h.undo.push(S.mask.slice());
  S.mask = h.redo.pop();
  renderMask(); draw(); queueSave();
}

function paintLine(x0, y0, x1, y1, value) {
  const r = S.brush / 2;
  const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0) / Math.max(0.5, r / 2)));
  for (let s = 0; s <= steps; s++) {
    paintDisc(x0 + ((x1 - x0) * s) / steps, y0 + ((y1 - y0) * s) / steps, r, value);
  }
}

function paintDisc(cx, cy, r, value) {
  const { width, height } = S.video;
  const r2 = r * r;
  for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(height - 1, Math.ceil(cy + r)); y++) {
    for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(width - 1, Math.ceil(cx + r)); x++) {
      const dx = x + 0.5 - cx;
      const dy = y + 0.5 - cy;
      const i = y * width + x;
      if ((dx * dx + dy * dy <= r2 || (Math.abs(dx) <= 0.5 && Math.abs(dy) <= 0.5)) && writable(i, value)) S.mask[i] = value;
    }
  }
}

function fillAt(x, y, value) {
  const { width, height } = S.video;
  x = Math.floor(x); y = Math.floor(y);
  if (x < 0 || y < 0 || x >= width || y >= height) return false;
  const target = S.mask[y * width + x];
  if (target === value || !writable(y * width + x, value)) return false;
  const stack = [y * width + x];
  while (stack.length) {
    const i = stack.pop();
    if (S.mask[i] !== target) continue;
    S.mask[i] = value;
    const px = i % width;
    if (px > 0) stack.push(i - 1);
    if (px < width - 1) stack.push(i + 1);
    if (i >= width) stack.push(i - width);
    if (i + width < width * height) stack.push(i + width);
  }
  return true;
}

function closePolygon() {
  if (S.polygon.length < 3) { S.polygon = []; draw(); return; }
  const { width, height } = S.video;
  const raster = makeCanvas(width, height).getContext("2d");
  raster.fillStyle = "#fff";
  raster.beginPath();
  S.polygon.forEach(([x, y], i) => (i ? raster.lineTo(x, y) : raster.moveTo(x, y)));
  raster.closePath();
  raster.fill();
  const alpha = raster.getImageData(0, 0, width, height).data;
  const before = startEdit();
  for (let i = 0; i < S.mask.length; i++) if (alpha[4 * i + 3] >= 128 && writable(i, S.object)) S.mask[i] = S.object;
  S.polygon = [];
  commit(before);
}

async function grabCut(start, end) {
  // A drag may leave the image: the box is the part of it inside the frame.
  const clip = (v, hi) => Math.max(0, Math.min(hi, Math.round(v)));
  const { width, height } = S.video;
  const box = [clip(start[0], width), clip(start[1], height), clip(end[0], width), clip(end[1], height)];
  const frame = S.frame;
  const video = S.video.name;
  const object = S.object;
  await busy("GrabCut…", async () => {
    try {
      const response = await api("POST", `${frameUrl(video, frame)}/grabcut`, JSON.stringify({ box }),
        { "Content-Type": "application/json" });
      const fg = new Uint8Array(await response.arrayBuffer());
      if (frame !== S.frame || video !== S.video.name) { showMessage("GrabCut result dropped: another frame is open", "info"); return; }
      if (!fg.some((v) => v)) { showMessage("GrabCut found no object in this box: try a tighter box or another tool", "info"); return; }
      const before = startEdit();
      for (let i = 0; i < fg.length; i++) if (fg[i] && writable(i, object)) S.mask[i] = object;
      commit(before);
    } catch (e) { showMessage(`GrabCut failed: ${e.message}`); }
  });
}

// ------------------------------------------------------------------------------------------
// Saving: a queue, one request at a time, each based on the last version the server gave.

function queueSave() {
  const entry = { video: S.video.name, frame: S.frame, data: S.mask.slice() };
  const last = S.saveQueue[S.saveQueue.length - 1];
  if (last && last.video === entry.video && last.frame === entry.frame) S.saveQueue[S.saveQueue.length - 1] = entry;
  else S.saveQueue.push(entry);
  // The objects the mask shows, as listed now: the server learns new ones before the mask.
  entry.objects = idsOf(entry.data).map((id) => S.objects.find((o) => o.id === id) || { id, name: `object ${id}`, color: S.video.palette[id] });
  setSaveState(entry.video, entry.frame, "saving…");
  runSaves();
}

function setSaveState(video, frame, text) {
  S.saveStates.set(`${video}/${frame}`, text);
  updateSaveState();
}

async function runSaves() {
  if (S.saving) return;
  S.saving = true;
  while (S.saveQueue.length) {
    const entry = S.saveQueue.shift();
    const k = `${entry.video}/${entry.frame}`;
    const base = S.versions.get(k) || "";
    try {
      const known = S.registered.get(entry.video);
      for (const obj of entry.objects) {
        if (!known.has(obj.id) && !(await saveObject(obj, {}, entry.video))) throw new Error(`object ${obj.id} could not be added`);
      }
      const response = await api("PUT", `${frameUrl(entry.video, entry.frame)}/mask?base=${encodeURIComponent(base)}`,
        entry.data, { "Content-Type": "application/octet-stream" });
      const result = await response.json();
      S.versions.set(k, result.version);
      if (S.video && S.video.name === entry.video) {
        S.video.labeled = result.labeled_frames;
        if (entry.frame === S.frame) S.version = result.version;
        updateTimeline(); updateFrameLabel();
        // Labeled now: the propagated overlay gives way to the saved mask at once.
        if (entry.frame === S.frame) draw();
        const row = S.videos.find((v) => v.name === entry.video);
        if (row) { row.labeled = result.labeled_frames.length; updateVideoRow(row); }
      }
      const pending = S.saveQueue.some((q) => `${q.video}/${q.frame}` === k);
      setSaveState(entry.video, entry.frame, pending ? "saving…" : "saved");
      if (S.info.propagation && S.video && S.video.name === entry.video && S.job.state !== "none") pollJob();
    } catch (e) {
      setSaveState(entry.video, entry.frame, "not saved");
      showMessage(e.status === 409 ? e.message : `not saved: ${e.message}`);
      S.saveQueue = S.saveQueue.filter((q) => `${q.video}/${q.frame}` !== k);
      S.history.delete(k);
      if (S.video && S.video.name === entry.video && entry.frame === S.frame) await loadFrame(S.frame);
    }
  }
  S.saving = false;
}

async function flushSaves() {
  while (S.saving || S.saveQueue.length) await new Promise((r) => setTimeout(r, 20));
}

function updateVideoRow(row) {
  for (const li of $("videos").children) {
    if (li.dataset.name === row.name) li.querySelector(".count").textContent = `${row.labeled} / ${row.frames}`;
  }
}

// ------------------------------------------------------------------------------------------
// Suggestions, propagation, export

async function suggest() {
  const k = Number($("suggest-k").value) || 2;
  const strategy = $("suggest-strategy").value;
  const name = S.video.name;
  await busy("suggesting…", async () => {
    await flushSaves();  // model strategies start from the labeled frames as saved
    try {
      const result = await getJSON(`${videoUrl(name)}/suggest?k=${k}&strategy=${strategy}`);
      if (!S.video || S.video.name !== name) return;
      S.video.suggested = result.frames;  // the server keeps them too (reload, restart)
      S.suggested = new Set(result.frames);
      updateTimeline();
      showMessage(`suggested frames: ${result.frames.join(", ")}`, "info");
    } catch (e) { showMessage(e.message); }
  });
}

// Both ways from every labeled frame, or (direction given) one way from the current frame.
async function propagate(direction) {
  if (!S.info.propagation) return;
  const name = S.video.name;
  const body = direction ? { from: S.frame, direction } : {};
  await busy("starting propagation…", async () => {
    await flushSaves();
    try {
      await sendJSON("POST", `${videoUrl(name)}/propagate`, body);
      if (!S.video || S.video.name !== name) return;
      S.propCache = new Map();
      S.job = { state: "queued", ready: new Set() };
      await pollJob();
    } catch (e) { showMessage(e.message); }
  });
}

const JOB_STATES = { queued: "waiting…", running: "running", done: "done", failed: "failed", cancelled: "cancelled" };

async function pollJob() {
  clearTimeout(S.poll);
  if (!S.video) return;
  const name = S.video.name;
  let status;
  try { status = await getJSON(`${videoUrl(name)}/propagation`); } catch (e) { return; }
  if (!S.video || S.video.name !== name) return;
  const hadCurrent = S.job.ready.has(S.frame);
  S.job = { ...status, ready: new Set(status.ready) };
  let text = "not propagated yet";
  if (status.state !== "none") {
    text = `${JOB_STATES[status.state] || status.state} ${status.done}/${status.total}`;
    if (status.span) text += ` (${status.span.direction} from frame ${status.span.from}: ${status.span.first}–${status.span.last})`;
    if (status.reused) text += ` (${status.reused} kept)`;
    if (status.stale) text += " (labels changed since: propagate again)";
    if (status.error) text += `: ${status.error}`;
  }
  $("progress").textContent = text;
  $("propagate").textContent = status.state === "running" ? "Restart" : "Propagate";
  updateTimeline();
  if (!hadCurrent && S.job.ready.has(S.frame)) { await loadPropagated(); updateFrameLabel(); draw(); }
  if (status.state === "running" || status.state === "queued") S.poll = setTimeout(pollJob, 300);
}

async function exportAll() {
  $("export-result").textContent = "";
  await busy("exporting…", async () => {
    await flushSaves();
    try {
      const result = await sendJSON("POST", "/api/export", {});
      const dense = result.videos.filter((v) => v.dense).length;
      let text = `${result.out}: ${result.videos.length} videos (${dense} dense); train: ${result.train.join(", ")}`;
      text += result.val.length ? `; held out for validation: ${result.val.join(", ")}` : `; ${result.note}`;
      $("export-result").textContent = text;
    } catch (e) { showMessage(`export failed: ${e.message}`); }
  });
}

// ------------------------------------------------------------------------------------------
// Playback: frames in turn at about 10 per second (the mask and overlay of each as it loads).

function togglePlay() {
  if (S.playing) { stopPlaying(); return; }
  if (S.frame >= S.video.frames - 1) loadFrame(0);
  $("play").textContent = "Pause";
  const step = async () => {
    if (!S.playing) return;
    if (S.frame >= S.video.frames - 1) { stopPlaying(); return; }
    await loadFrame(S.frame + 1);
    if (S.playing) S.playing = setTimeout(step, 100);
  };
  S.playing = setTimeout(step, 100);
}

function stopPlaying() {
  clearTimeout(S.playing);
  S.playing = null;
  $("play").textContent = "Play";
}

// ------------------------------------------------------------------------------------------
// Input

function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left - S.tx) / S.zoom, (event.clientY - rect.top - S.ty) / S.zoom];
}

function setTool(tool) {
  S.tool = tool;
  S.polygon = [];
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
  draw();
}

function setBrush(size) {
  S.brush = Math.max(1, Math.min(80, size));
  $("brush-size").value = S.brush;
  $("brush-size-value").textContent = S.brush;
  draw();
}

canvas.addEventListener("pointerdown", (event) => {
  if (!S.mask) return;
  canvas.setPointerCapture(event.pointerId);
  const p = toImage(event);
  if (event.button === 2 || event.button === 1 || S.spaceDown) {
    S.drag = { kind: "pan", x: event.clientX, y: event.clientY, tx: S.tx, ty: S.ty };
    return;
  }
  if (event.button !== 0) return;
  if (S.tool === "brush" || S.tool === "eraser") {
    const value = S.tool === "brush" ? S.object : 0;
    S.drag = { kind: "paint", before: startEdit(), last: p, value };
    if (value) ensureObject(value);
    paintLine(p[0], p[1], p[0], p[1], value);
    renderMask(); draw();
  } else if (S.tool === "fill") {
    const before = startEdit();
    // The fill may change nothing, yet the propagated mask may just have been taken up.
    if (fillAt(p[0], p[1], S.object) || S.mask.some((v, i) => v !== before[i])) commit(before);
  } else if (S.tool === "polygon") {
    S.polygon.push(p);
    draw();
  } else if (S.tool === "box") {
    S.drag = { kind: "box", start: p, end: p };
  }
});

canvas.addEventListener("pointermove", (event) => {
  const p = toImage(event);
  S.hover = p;
  const d = S.drag;
  if (d && d.kind === "pan") {
    S.tx = d.tx + event.clientX - d.x;
    S.ty = d.ty + event.clientY - d.y;
    S.fitted = false;
  } else if (d && d.kind === "paint") {
    paintLine(d.last[0], d.last[1], p[0], p[1], d.value);
    d.last = p;
    renderMask();
  } else if (d && d.kind === "box") {
    d.end = p;
  }
  draw();
});

canvas.addEventListener("pointerup", (event) => {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.kind === "paint") commit(d.before);
  else if (d.kind === "box") grabCut(d.start, toImage(event));
  draw();
});

canvas.addEventListener("dblclick", () => { if (S.tool === "polygon") closePolygon(); });
canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const rect = canvas.getBoundingClientRect();
  zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - rect.left, event.clientY - rect.top);
}, { passive: false });

function stepLabeled(direction) {
  const frames = S.video.labeled.filter((f) => (direction > 0 ? f > S.frame : f < S.frame));
  if (frames.length) loadFrame(direction > 0 ? frames[0] : frames[frames.length - 1]);
}

document.addEventListener("keydown", (event) => {
  if (!S.video) return;
  const target = event.target;
  if (target.tagName === "INPUT" && target.type === "text") return;
  const k = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (k === "z" || k === "Z")) { event.preventDefault(); (event.shiftKey ? redo : undo)(); return; }
  if (ctrl && (k === "y" || k === "Y")) { event.preventDefault(); redo(); return; }
  if (ctrl) return;
  const tools = { b: "brush", e: "eraser", p: "polygon", f: "fill", g: "box" };
  if (k === "ArrowLeft" || k === "a") { event.shiftKey ? stepLabeled(-1) : loadFrame(S.frame - 1); }
  else if (k === "ArrowRight" || k === "d") { event.shiftKey ? stepLabeled(1) : loadFrame(S.frame + 1); }
  else if (k === "A") stepLabeled(-1);
  else if (k === "D") stepLabeled(1);
  else if (tools[k]) setTool(tools[k]);
  else if (k === "[") setBrush(S.brush - 2);
  else if (k === "]") setBrush(S.brush + 2);
  else if (k >= "1" && k <= "9") { const obj = S.objects[Number(k) - 1]; if (obj) selectObject(obj.id); }
  else if (k === "n") addObject();
  else if (k === "Enter") closePolygon();
  else if (k === "Escape") { S.polygon = []; S.drag = null; draw(); }
  else if (k === "o") { $("overlay").checked = !$("overlay").checked; S.overlay = $("overlay").checked; draw(); }
  else if (k === "r") propagate();
  else if (k === "k") acceptPropagated();
  else if (k === "l") togglePlay();
  else if (k === "+" || k === "=") zoomAt(1.25, canvas.width / 2, canvas.height / 2);
  else if (k === "-") zoomAt(1 / 1.25, canvas.width / 2, canvas.height / 2);
  else if (k === "0") fitView();
  else if (k === " ") { S.spaceDown = true; event.preventDefault(); return; }
  else return;
  event.preventDefault();
});
document.addEventListener("keyup", (event) => { if (event.key === " ") S.spaceDown = false; });

for (const b of document.querySelectorAll("[data-tool]")) b.onclick = () => setTool(b.dataset.tool);
$("brush-size").oninput = () => setBrush(Number($("brush-size").value));
$("undo").onclick = undo;
$("redo").onclick = redo;
$("zoom-fit").onclick = fitView;
$("add-object").onclick = addObject;
$("suggest").onclick = suggest;
$("propagate").onclick = () => propagate();
$("propagate-forward").onclick = () => propagate("forward");
$("propagate-backward").onclick = () => propagate("backward");
$("export").onclick = exportAll;
$("accept").onclick = acceptPropagated;
$("play").onclick = togglePlay;
$("scrub").oninput = () => { stopPlaying(); loadFrame(Number($("scrub").value)); };
$("only-background").onchange = () => { S.onlyBackground = $("only-background").checked; };
$("overlay").onchange = () => { S.overlay = $("overlay").checked; draw(); };
$("opacity").oninput = () => { S.opacity = Number($("opacity").value); if (S.mask) { renderMask(); renderProp(); draw(); } };
// The stage changes size with the window and when the Objects bar wraps: a fitted frame
// is fitted again, a zoomed one keeps its zoom.
new ResizeObserver(() => (S.fitted ? fitView() : draw())).observe(canvas);

// For scripted use (tests, screenshots): image pixel -> page coordinates, and the state.
window.annotator = {
  ready: false,
  state: S,
  toClient(x, y) {
    const rect = canvas.getBoundingClientRect();
    return { x: rect.left + S.tx + x * S.zoom, y: rect.top + S.ty + y * S.zoom };
  },
  flush: flushSaves,
  loadFrame, openVideo, selectObject, addObject, draw,
};

setTool("brush");
init().catch((e) => showMessage(`cannot load: ${e.message}`));
