// yoloserve's demo page: images through /v1/detect (this module), video through the streams API
// (video.js), and the live panel from /v1/stats, /v1/monitoring and /v1/model (live.js). Plain
// JavaScript modules, no build step, nothing fetched from anywhere but this service.

import { $, KEY_STORE, api, classesSelected, colour, drawDetections, el, fmt, params, say } from "./common.js";
import { loadModel, pollDrift, pollStats } from "./live.js";
import { startVideo, stopVideo } from "./video.js";

const state = {
  images: [],           // {file, bitmap, card, wanted, done, busy}
  generation: 0,        // bumped when a parameter changes
  models: {},           // name -> model info (/v1/models), when the service serves several
  model: null,          // the chosen one's name (null: the default model's routes)
};

function task() {
  return state.model ? state.models[state.model].task || "detect" : state.defaultTask || "detect";
}

function route() {
  const base = state.model ? `/v1/models/${encodeURIComponent(state.model)}` : "/v1";
  return task() === "classify" ? `${base}/classify` : `${base}/detect`;
}

// -- parameters ------------------------------------------------------------------------------------

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
  const empty = $("class-filter-empty");
  if (empty) empty.remove();
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const [id, name] of Object.entries(classes)) {
    const input = el("input", { type: "checkbox", value: name, checked: true, id: `class-${id}` });
    input.addEventListener("change", parametersChanged);
    const chip = el("span", { className: "chip" });
    chip.style.background = colour(Number(id));
    box.append(el("label", { htmlFor: input.id }, input, " ", chip, name));
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
        const result = await api(route(), { method: "POST", body: form });
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

function topRow(t) {
  const chip = el("span", { className: "chip" });
  chip.style.background = colour(t.class_id);
  return el("tr", {}, el("td", { className: "class" }, chip, t.class_name),
    el("td", { className: "confidence" }, t.confidence.toFixed(3)), el("td", { className: "box" }, "—"));
}

function render(item, result, generation) {
  const detections = result && result.detections ? result.detections : [];
  const top = result && result.top ? result.top : null;  // a classifier's answer
  const canvas = item.card.querySelector("canvas");
  if (item.bitmap) {
    drawDetections(canvas, item.bitmap, item.bitmap.width, item.bitmap.height, detections);
  }
  canvas.setAttribute("aria-label", `${item.file.name}: ${detections.length} object(s) found`);
  item.card.querySelector("p.timings").replaceChildren(...(result ? timingsLine(result) : []));
  item.card.querySelector("tbody").replaceChildren(...(top ? top.map(topRow) : detections.map(detectionRow)));
  item.done = generation;
  item.card.dataset.count = String(top ? top.length : detections.length);
  item.card.dataset.masks = String(detections.filter((d) => d.mask).length);
  item.card.dataset.keypoints = String(detections.filter((d) => d.keypoints).length);
  item.card.dataset.rotated = String(detections.filter((d) => d.polygon).length);
  if (top) item.card.dataset.top = top[0] ? top[0].class_name : "";
  item.card.dataset.generation = String(generation);
  item.card.dataset.state = "done";
}

// -- several models: a choice of which one answers -------------------------------------------------------

async function loadModels() {
  try {
    const listed = await api("/v1/models");
    for (const m of listed.models) state.models[m.name] = m;
    const select = $("model-select");
    select.replaceChildren(...listed.models.map((m) =>
      el("option", { value: m.name }, `${m.name} (${m.task || "detect"})`)));
    select.value = listed.default;
    $("model-field").hidden = listed.models.length < 2;
    select.addEventListener("change", () => {
      state.model = select.value;
      buildClassFilter(state.models[state.model].classes);
      parametersChanged();
    });
  } finally {
    document.body.dataset.ready = "true";
  }
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
  loadModel((model) => {
    state.defaultTask = model.task;
    buildClassFilter(model.classes);
    loadModels();
  });
  pollStats();
  pollDrift();
  setInterval(pollStats, 1000);
  setInterval(pollDrift, 2000);
}

document.addEventListener("DOMContentLoaded", init);
