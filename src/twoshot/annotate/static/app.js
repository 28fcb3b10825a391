// twoshot annotate (see state.js): loading videos and frames, suggestions, propagation,
// export, playback, keyboard and mouse, start-up.
"use strict";

// ------------------------------------------------------------------------------------------
// Loading

async function init() {
  S.info = await getJSON("/api/info");
  $("dataset").textContent = `${S.info.data} (${S.info.layout})`;
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
  // Without a SAM 2 checkpoint the click tool is not offered; the toolbar says why.
  $("click-tool").hidden = !S.info.clicks;
  $("click-note").hidden = S.info.clicks;
  $("click-note").title = S.info.clicks_unavailable || "";
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
  S.clicks = null;
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
  if (S.frame !== index) endClicks();
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
  if (tool === "click" && !S.info.clicks) { showMessage(S.info.clicks_unavailable); return; }
  if (tool !== "click") endClicks();
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
  } else if (S.tool === "click") {
    // A click is a point prompt (Shift or Alt: outside the object); a drag draws a box.
    S.drag = { kind: "prompt", start: p, end: p, x: event.clientX, y: event.clientY, negative: event.shiftKey || event.altKey, moved: false };
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
  } else if (d && (d.kind === "box" || d.kind === "prompt")) {
    d.end = p;
    if (d.kind === "prompt" && Math.hypot(event.clientX - d.x, event.clientY - d.y) > 4) d.moved = true;
  }
  draw();
});

canvas.addEventListener("pointerup", (event) => {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.kind === "paint") commit(d.before);
  else if (d.kind === "box") grabCut(d.start, toImage(event));
  else if (d.kind === "prompt") {
    const end = toImage(event);
    if (d.moved) {
      const box = [Math.min(d.start[0], end[0]), Math.min(d.start[1], end[1]), Math.max(d.start[0], end[0]), Math.max(d.start[1], end[1])];
      addPrompt({ box });
    } else addPrompt({ point: [d.start[0], d.start[1], d.negative ? 0 : 1] });
  }
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
  const tools = { b: "brush", e: "eraser", p: "polygon", f: "fill", g: "box", c: "click" };
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
  else if (k === "Escape") { S.polygon = []; S.drag = null; endClicks(); draw(); }
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
