// twoshot annotate (see state.js): the editing tools, undo and the save queue.
"use strict";

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
// with "only on background", only background and the current object's pixels (the eraser:
// the current object's only), so that other objects are never drawn over.
function writable(i, value) {
  const v = S.mask[i];
  if (S.locked.has(v)) return false;
  if (S.onlyBackground) return value === 0 ? v === S.object : v === 0 || v === value;
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
  undoPrompt();
  h.redo.push(S.mask.slice());
  S.mask = h.undo.pop();
  renderMask(); draw(); queueSave();
}

function redo() {
  const h = history();
  if (!h.redo.length) return;
  endClicks();
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
// Click-to-segment (SAM 2 checkpoints): clicks and a box on this frame, for the current
// object. The server answers the object's mask for all the prompts so far; it replaces the
// object's pixels of the frame as it was when the first prompt was given (other objects,
// locks and "only on background" respected) and is saved as any edit. Prompts given while a
// request runs are sent together with the next one.

function clickSession() {
  const c = S.clicks;
  return c && S.video && c.video === S.video.name && c.frame === S.frame && c.object === S.object ? c : null;
}

function endClicks() {
  if (!S.clicks) return;
  S.clicks = null;
  draw();
}

// prompt: {box: [x0, y0, x1, y1]} (starts new prompts) or {point: [x, y, label]}.
async function addPrompt(prompt) {
  if (!S.info.clicks) { showMessage(S.info.clicks_unavailable); return; }
  const { width, height } = S.video;
  const clip = (v, hi) => Math.max(0, Math.min(hi, v));
  let c = clickSession();
  if (!c || prompt.box) c = { video: S.video.name, frame: S.frame, object: S.object, box: null, points: [], base: null, sent: 0, applied: [] };
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    c.box = [clip(x0, width), clip(y0, height), clip(x1, width), clip(y1, height)];
  } else {
    const [x, y, label] = prompt.point;
    if (x < 0 || y < 0 || x > width || y > height) return;  // a click beside the frame
    c.points.push([x, y, label]);
  }
  c.version = (c.version || 0) + 1;
  S.clicks = c;
  draw();
  if (c.running) return;  // the running request sends these prompts when it is answered
  c.running = true;
  try {
    const video = S.video.name;
    if (!S.registered.get(video).has(c.object)) {
      ensureObject(c.object);
      const obj = S.objects.find((o) => o.id === c.object);
      if (!(await saveObject(obj, {}, video))) return;
    }
    while (c.sent !== c.version && S.clicks === c) {
      c.sent = c.version;
      await segmentOnce(c);
    }
  } finally { c.running = false; }
}

async function segmentOnce(c) {
  const body = JSON.stringify({ object: c.object, box: c.box, points: c.points });
  const prompts = { box: c.box, n: c.points.length };  // what this answer is for
  await busy("segmenting…", async () => {
    let fg;
    try {
      const response = await api("POST", `${frameUrl(c.video, c.frame)}/segment`, body, { "Content-Type": "application/json" });
      fg = new Uint8Array(await response.arrayBuffer());
      S.lastSegment = { encoded: response.headers.get("X-Encoded") === "1", seconds: Number(response.headers.get("X-Seconds")) };
    } catch (e) {
      showMessage(`segmenting failed: ${e.message}`);
      if (S.clicks === c) endClicks();
      return;
    }
    if (S.clicks !== c || c.video !== S.video.name || c.frame !== S.frame) return;  // left meanwhile
    const before = c.base ? S.mask.slice() : startEdit();
    if (!c.base) c.base = S.mask.slice();
    S.mask = c.base.slice();
    for (let i = 0; i < S.mask.length; i++) if (S.mask[i] === c.object && !S.locked.has(c.object)) S.mask[i] = 0;
    for (let i = 0; i < fg.length; i++) if (fg[i] && writable(i, c.object)) S.mask[i] = c.object;
    c.applied.push(prompts);
    commit(before);
    if (!fg.some((v) => v)) showMessage("SAM 2 found no object here: add a click or draw a box", "info");
  });
}

// Undo during click prompts also takes back the prompts of the answer it undoes.
function undoPrompt() {
  const c = clickSession();
  if (!c) return;
  c.applied.pop();
  const previous = c.applied[c.applied.length - 1];
  if (!previous) { S.clicks = null; return; }
  c.box = previous.box;
  c.points = c.points.slice(0, previous.n);
  c.version += 1;
  c.sent = c.version;  // the mask comes back from the undo history, not from the server
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
