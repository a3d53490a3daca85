// Video mode: a local file or the webcam, frame by frame through the streams API
// (POST /v1/streams/{id}/frames with an increasing seq), track ids drawn, frames/s shown.

import { $, api, colour, drawDetections, el, params, say } from "./common.js";

let current = null;  // the running session, if any

function streamId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "page-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function startVideo(file) {
  await stopVideo();
  const video = $("video-source");
  const session = { id: streamId(), seq: 0, running: true, times: [], media: null, url: null,
                    loop: null };
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
  current = session;
  $("video-stop").disabled = false;
  say("video-status", `stream ${session.id}`);
  session.loop = videoLoop(session, video);
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
      if (session.running) say("video-status", err.message, true);
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

export async function stopVideo() {
  const session = current;
  if (!session) return;
  current = null;
  session.running = false;
  await session.loop;  // the frame on its way is answered before the stream is deleted
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
