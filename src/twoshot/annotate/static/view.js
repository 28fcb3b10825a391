// twoshot annotate (see state.js): drawing the frame, its masks, the timeline and the objects.
"use strict";

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
  const c = clickSession();
  if (c) {
    if (c.box) {
      ctx.strokeStyle = "#0ff";
      ctx.setLineDash([4 / S.zoom, 3 / S.zoom]);
      ctx.strokeRect(c.box[0], c.box[1], c.box[2] - c.box[0], c.box[3] - c.box[1]);
      ctx.setLineDash([]);
    }
    for (const [x, y, label] of c.points) {
      ctx.fillStyle = label ? "#3f3" : "#f33";
      ctx.strokeStyle = "#000";
      ctx.beginPath();
      ctx.arc(x, y, 4 / S.zoom, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    }
  }
  if (S.drag && (S.drag.kind === "box" || (S.drag.kind === "prompt" && S.drag.moved))) {
    ctx.strokeStyle = S.drag.kind === "box" ? "#ff0" : "#0ff";
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
  if (id !== S.object) endClicks();
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
  const name = S.video.name;
  await busy("deleting object…", async () => {
    try {
      await flushSaves();
      const result = await (await api("DELETE", `${videoUrl(name)}/objects/${obj.id}`)).json();
      if (!S.video || S.video.name !== name) return;
      S.objects = S.objects.filter((o) => o.id !== obj.id);
      S.registered.get(name).delete(obj.id);
      S.history = new Map();
      // Those frames were rewritten: their versions (and thumbnails) are read again.
      for (const frame of result.frames) S.versions.delete(key(frame));
      const details = await getJSON(videoUrl(name));
      S.video.labeled = details.labeled;
      if (S.object === obj.id) S.object = S.objects.length ? S.objects[0].id : nextObjectId();
      renderObjects();
      await loadFrame(S.frame);
      refreshVideos();
      if (S.info.propagation && S.job.state !== "none") pollJob();
    } catch (e) { showMessage(`delete failed: ${e.message}`); }
  });
}
