// yoloserve's demo page: images through /v1/detect, video through the streams API, and a live
// panel from /v1/stats, /v1/monitoring and /v1/model. Plain JavaScript, no build step, nothing
// fetched from anywhere but this service.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "yoloserve.apiKey";
const state = {
  model: null,          // GET /v1/model
  images: [],           // {file, bitmap, card, wanted, done, busy}
  generation: 0,        // bumped when a parameter changes
  video: null,          // the running video session, if any
};

// -- small helpers ---------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function colour(classId) {
  return `hsl(${(classId * 137.508) % 360}, 78%, 42%)`;
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: { message: text } }; }
  if (!response.ok) {
    const err = (body && body.error) || {};
    const message = response.status === 401
      ? "the service wants an API key: enter it at the top"
      : `${response.status} ${err.code || ""}: ${err.message || response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function say(id, message, isError = false) {
  const node = $(id);
  node.textContent = message;
  node.classList.toggle("error", isError);
}

// -- parameters ------------------------------------------------------------------------------------

function params() {
  const out = {
    conf: $("conf").value,
    iou: $("iou").value,
    max_det: $("max-det").value,
  };
  const boxes = [...document.querySelectorAll("#class-filter input[type=checkbox]")];
  const kept = boxes.filter((b) => b.checked).map((b) => b.value);
  if (kept.length < boxes.length) out.classes = kept.join(",");
  return out;
}

function classesSelected() {
  return document.querySelectorAll("#class-filter input[type=checkbox]:checked").length > 0;
}

let debounce = null;
function parametersChanged() {
  $("conf-value").value = Number($("conf").value).toFixed(2);
  $("iou-value").value = Number($("iou").value).toFixed(2);
  clearTimeout(debounce);
  debounce = setTimeout(() => {
    state.generation += 1;
    for (const item of state.images) request(item);
  }, 150);
}

function buildClassFilter(classes) {
  const box = $("class-filter");
  $("class-filter-empty").remove();
  for (const [id, name] of Object.entries(classes)) {
    const input = el("input", { type: "checkbox", value: name, checked: true, id: `class-${id}` });
    input.addEventListener("change", parametersChanged);
    const chip = el("span", { className: "chip" });
    chip.style.background = colour(Number(id));
    box.append(el("label", { htmlFor: input.id }, input, " ", chip, name));
  }
}

// -- drawing -----------------------------------------------------------------------------------------

function drawDetections(canvas, source, width, height, detections, withTracks = false) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, width, height);
  const line = Math.max(2, Math.round(width / 320));
  const size = Math.max(12, Math.round(width / 45));
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of detections) {
    const b = d.box_2d;
    const c = colour(d.class_id);
    ctx.strokeStyle = c;
    ctx.lineWidth = line;
    ctx.strokeRect(b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min);
    const track = withTracks && d.track_id !== null && d.track_id !== undefined ? `#${d.track_id} ` : "";
    const label = `${track}${d.class_name} ${d.confidence.toFixed(2)}`;
    const w = ctx.measureText(label).width + 6;
    const y = b.y_min - size - 4 >= 0 ? b.y_min - size - 4 : b.y_min;
    ctx.fillStyle = c;
    ctx.fillRect(b.x_min - line / 2, y, w, size + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, b.x_min + 3 - line / 2, y + 2);
  }
}

function timingsLine(result) {
  const meta = result.processing_metadata;
  const t = meta.timings_ms || {};
  const parts = [["queue", t.queue], ["preprocess", t.preprocess], ["inference", t.inference],
                 ["postprocess", t.postprocess], ["total", t.total]];
  const spans = parts.map(([name, v]) => el("span", { className: `timing-${name}` }, `${name} ${fmt(v)} ms`));
  spans.push(el("span", {}, `batch of ${meta.batch_size}`));
  if (meta.cached) spans.push(el("span", {}, "cached"));
  return spans;
}

function detectionRow(d) {
  const chip = el("span", { className: "chip" });
  chip.style.background = colour(d.class_id);
  const b = d.box_2d;
  return el("tr", {},
    el("td", { className: "class" }, chip, d.class_name),
    el("td", { className: "confidence" }, d.confidence.toFixed(3)),
    el("td", { className: "box" }, [b.x_min, b.y_min, b.x_max, b.y_max].map((v) => v.toFixed(1)).join(", ")));
}

// -- images ------------------------------------------------------------------------------------------

function card(file) {
  const canvas = el("canvas", { role: "img", "aria-label": `${file.name}: not yet analysed` });
  const table = el("table", { className: "detections" },
    el("caption", {}, `Detections in ${file.name}`),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Class"), el("th", { scope: "col" }, "Confidence"),
      el("th", { scope: "col" }, "Box (x_min, y_min, x_max, y_max)"))),
    el("tbody"));
  return el("article", { className: "result", dataset: { name: file.name, state: "pending" } },
    el("h3", {}, file.name), canvas, el("p", { className: "timings" }),
    el("div", { className: "table-wrap" }, table), el("p", { className: "status", role: "status" }));
}

async function addImages(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!images.length) return;
  say("image-status", `${images.length} image(s)`);
  for (const file of images) {
    const item = { file, bitmap: null, card: card(file), wanted: 0, done: -1, busy: false };
    try {
      item.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      item.bitmap = null;  // the service says why it cannot read it
    }
    state.images.push(item);
    $("results").prepend(item.card);
    request(item);
  }
}

function request(item) {
  item.wanted = state.generation;
  if (!item.busy) pump(item);
}

async function pump(item) {
  item.busy = true;
  const status = item.card.querySelector("p.status");
  try {
    while (item.done < item.wanted) {
      const generation = item.wanted;
      item.card.dataset.state = "running";
      if (!classesSelected()) {
        render(item, null, generation);
        status.textContent = "no class selected";
        continue;
      }
      const form = new FormData();
      form.append("image", item.file, item.file.name);
      for (const [k, v] of Object.entries(params())) form.append(k, v);
      try {
        const result = await api("/v1/detect", { method: "POST", body: form });
        if (generation === item.wanted) render(item, result, generation);
        status.textContent = "";
        status.classList.remove("error");
      } catch (err) {
        status.textContent = err.message;
        status.classList.add("error");
        item.card.dataset.state = "error";
        item.done = generation;
      }
    }
  } finally {
    item.busy = false;
  }
}

function render(item, result, generation) {
  const detections = result ? result.detections : [];
  const canvas = item.card.querySelector("canvas");
  if (item.bitmap) {
    drawDetections(canvas, item.bitmap, item.bitmap.width, item.bitmap.height, detections);
  }
  canvas.setAttribute("aria-label", `${item.file.name}: ${detections.length} object(s) found`);
  item.card.querySelector("p.timings").replaceChildren(...(result ? timingsLine(result) : []));
  item.card.querySelector("tbody").replaceChildren(...detections.map(detectionRow));
  item.done = generation;
  item.card.dataset.count = String(detections.length);
  item.card.dataset.generation = String(generation);
  item.card.dataset.state = "done";
}

// -- video ---------------------------------------------------------------------------------------------

function streamId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "page-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function startVideo(file) {
  await stopVideo();
  const video = $("video-source");
  const session = { id: streamId(), seq: 0, running: true, times: [], media: null, url: null };
  try {
    if (file) {
      session.url = URL.createObjectURL(file);
      video.srcObject = null;
      video.src = session.url;
      video.loop = true;
    } else {
      session.media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      video.removeAttribute("src");
      video.srcObject = session.media;
    }
    await video.play();
  } catch (err) {
    say("video-status", `cannot play it: ${err.message}`, true);
    return;
  }
  state.video = session;
  $("video-stop").disabled = false;
  say("video-status", `stream ${session.id}`);
  videoLoop(session, video);
}

async function videoLoop(session, video) {
  const grab = document.createElement("canvas");
  const table = $("video-table").querySelector("tbody");
  while (session.running) {
    if (video.readyState < 2 || !video.videoWidth) {
      await new Promise((r) => requestAnimationFrame(r));
      continue;
    }
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    grab.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((r) => grab.toBlob(r, "image/jpeg", 0.85));
    session.seq += 1;
    const form = new FormData();
    form.append("frame", blob, `frame-${session.seq}.jpg`);
    form.append("seq", String(session.seq));
    for (const [k, v] of Object.entries(params())) form.append(k, v);
    let result;
    try {
      result = await api(`/v1/streams/${session.id}/frames`, { method: "POST", body: form });
    } catch (err) {
      say("video-status", err.message, true);
      break;
    }
    if (!session.running) break;
    drawDetections($("video-canvas"), grab, grab.width, grab.height, result.detections, true);
    table.replaceChildren(...result.detections.map((d) => {
      const chip = el("span", { className: "chip" });
      chip.style.background = colour(d.class_id);
      return el("tr", {},
        el("td", { className: "track" }, d.track_id === null || d.track_id === undefined ? "–" : `#${d.track_id}`),
        el("td", { className: "class" }, chip, d.class_name),
        el("td", { className: "confidence" }, d.confidence.toFixed(3)));
    }));
    const now = performance.now();
    session.times.push(now);
    if (session.times.length > 20) session.times.shift();
    const span = (now - session.times[0]) / 1000;
    $("video-fps").value = session.times.length > 1 && span > 0 ? ((session.times.length - 1) / span).toFixed(1) : "–";
    $("video-frames").value = String(session.seq);
  }
}

async function stopVideo() {
  const session = state.video;
  if (!session) return;
  state.video = null;
  session.running = false;
  const video = $("video-source");
  video.pause();
  if (session.media) for (const track of session.media.getTracks()) track.stop();
  if (session.url) URL.revokeObjectURL(session.url);
  video.srcObject = null;
  video.removeAttribute("src");
  $("video-stop").disabled = true;
  if (session.seq > 0) {
    try {
      await api(`/v1/streams/${session.id}`, { method: "DELETE" });
    } catch {
      // the stream may have expired already
    }
  }
  say("video-status", "stopped");
}

// -- live panel ---------------------------------------------------------------------------------------

async function pollStats() {
  if (document.hidden) return;
  let s;
  try { s = await api("/v1/stats"); } catch { return; }
  $("live-span").textContent = `this process, the last ${Math.round(s.span_s)} s (${s.requests} requests)`;
  $("stat-ips").textContent = fmt(s.images_per_s);
  $("stat-queue").textContent = String(s.queue_depth);
  $("stat-p50").textContent = s.latency_ms.p50 === null ? "–" : `${fmt(s.latency_ms.p50)} ms`;
  $("stat-p99").textContent = s.latency_ms.p99 === null ? "–" : `${fmt(s.latency_ms.p99)} ms`;
  $("stat-refusals").textContent = String(s.refusals_total);
  $("stat-inflight").textContent = String(s.inflight_batches);
  const most = Math.max(1, ...Object.values(s.batch_sizes));
  $("batch-table").querySelector("tbody").replaceChildren(...Object.entries(s.batch_sizes).map(([size, n]) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${Math.max(2, (n / most) * 12)}rem`;
    return el("tr", {}, el("td", {}, size), el("td", {}, bar, String(n)));
  }));
}

function distributions(canvas, c, countBins, confBins) {
  const base = c.baseline || { per_image: [], confidence: [] };
  const groups = [[base.per_image, c.window.per_image, countBins],
                  [base.confidence, c.window.confidence, confBins]];
  const width = 220, height = 48, gap = 14;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const slots = countBins + confBins;
  const slot = (width - gap) / slots;
  let x = 0;
  for (const [b, w, n] of groups) {
    const bt = b.reduce((a, v) => a + v, 0) || 1;
    const wt = w.reduce((a, v) => a + v, 0) || 1;
    for (let i = 0; i < n; i++) {
      const hb = ((b[i] || 0) / bt) * (height - 2);
      const hw = ((w[i] || 0) / wt) * (height - 2);
      ctx.fillStyle = style.getPropertyValue("--base");
      ctx.fillRect(x + i * slot, height - hb, slot / 2 - 1, hb);
      ctx.fillStyle = style.getPropertyValue("--now");
      ctx.fillRect(x + i * slot + slot / 2 - 1, height - hw, slot / 2 - 1, hw);
    }
    x += n * slot + gap;
  }
}

async function pollDrift() {
  if (document.hidden) return;
  let m;
  try { m = await api("/v1/monitoring"); } catch { return; }
  const line = {
    disabled: "monitoring is turned off",
    starting: "the model is loading",
    capturing_baseline: `capturing the baseline: ${m.baseline_images || 0} of ${m.baseline_target} images`,
    filling_window: `baseline of ${m.baseline_images} images; the window holds ${m.window_images} images`,
    scoring: `baseline of ${m.baseline_images} images; window of the last ${m.window_images} images; warning above ${m.threshold}`,
  }[m.state] || m.state;
  $("drift-state").textContent = line;
  $("drift-table").querySelector("tbody").replaceChildren(...m.classes.map((c) => {
    const chip = el("span", { className: "chip" });
    chip.style.background = colour(c.class_id);
    const high = c.score !== null && c.score > m.threshold;
    const meter = el("meter", { min: 0, max: Math.max(1, m.threshold * 2), low: m.threshold * 0.4,
                                high: m.threshold, optimum: 0, value: c.score || 0,
                                "aria-label": `drift of ${c.class_name}` });
    const canvas = el("canvas", { role: "img",
      "aria-label": `${c.class_name}: baseline and window distributions` });
    distributions(canvas, c, m.count_bins.length, m.confidence_bins);
    return el("tr", { dataset: { className: c.class_name } },
      el("td", {}, chip, c.class_name),
      el("td", {}, `${c.baseline ? fmt(c.baseline.rate, 2) : "–"} → ${fmt(c.window.rate, 2)}`),
      el("td", { className: `drift-score ${high ? "drift-high" : "drift-ok"}` }, meter, " ", fmt(c.score, 3)),
      el("td", {}, canvas));
  }));
}

async function loadModel() {
  try {
    state.model = await api("/v1/model");
  } catch (err) {
    say("model-line", `the model card is not available: ${err.message}`, true);
    setTimeout(loadModel, 2000);
    return;
  }
  const m = state.model;
  $("model-line").textContent = `${m.name} ${m.version} · ${m.backend} on ${m.device} (${m.precision})`;
  const rows = [["Name", m.name], ["Version", m.version], ["Backend", m.backend], ["Device", m.device],
                ["Precision", m.precision], ["Input size", `${m.input_size} px`],
                ["Classes", Object.values(m.classes).join(", ")],
                ["Batching", `up to ${m.max_batch_size} images, waiting ${m.max_wait_ms} ms`]];
  $("model-card").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  buildClassFilter(m.classes);
  document.body.dataset.ready = "true";
}

// -- wiring ---------------------------------------------------------------------------------------------

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORE, key.value);
    else sessionStorage.removeItem(KEY_STORE);
    parametersChanged();  // again with the new key
  });
  for (const id of ["conf", "iou", "max-det"]) $(id).addEventListener("input", parametersChanged);
  $("image-input").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
  const drop = $("drop-zone");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addImages(e.dataTransfer.files);
  });
  $("video-input").addEventListener("change", (e) => { if (e.target.files[0]) startVideo(e.target.files[0]); });
  const webcam = $("webcam-button");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    webcam.disabled = true;
    webcam.title = "this browser offers no camera here (it needs https or localhost)";
  }
  webcam.addEventListener("click", () => startVideo(null));
  $("video-stop").addEventListener("click", stopVideo);
  loadModel();
  pollStats();
  pollDrift();
  setInterval(pollStats, 1000);
  setInterval(pollDrift, 2000);
}

document.addEventListener("DOMContentLoaded", init);
