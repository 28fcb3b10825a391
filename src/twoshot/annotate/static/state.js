// twoshot annotate: the page. Plain JavaScript and canvas, no build step: state.js, view.js,
// edit.js and app.js are loaded in that order as plain scripts sharing their globals.
// Masks are Uint8Arrays of object ids (one byte per pixel, row order), exchanged with the
// server as raw bytes; every edit is saved at once, based on the version it started from.
// This file: the state, server requests, the busy state and messages.
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
  // Click-to-segment prompts on the frame shown: {video, frame, object, box, points, base}.
  clicks: null, lastSegment: null,
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
