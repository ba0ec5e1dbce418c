// comfyume's workspace extension: shows where the user's prompt is in the shared queue ("queued, N jobs
// ahead", "waiting for a free GPU", "held", "retrying"), from the workspace WebSocket's `comfyume_status`
// messages. Served by comfyume at /u/<user>/extensions/comfyume/comfyume.js; nothing is fetched elsewhere.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const BADGE_ID = "comfyume-status";

function badge() {
  let el = document.getElementById(BADGE_ID);
  if (!el) {
    el = document.createElement("div");
    el.id = BADGE_ID;
    el.setAttribute("role", "status");
    el.style.cssText =
      "position:fixed;right:1rem;bottom:4.5rem;z-index:10000;padding:.5rem .8rem;border-radius:6px;" +
      "background:#2b3d63;color:#fff;font:14px system-ui,sans-serif;box-shadow:0 2px 8px #0008;display:none";
    document.body.appendChild(el);
  }
  return el;
}

function show(text) {
  const el = badge();
  el.textContent = text;
  el.style.display = "block";
}

function hide() {
  const el = document.getElementById(BADGE_ID);
  if (el) el.style.display = "none";
}

app.registerExtension({
  name: "comfyume.QueueStatus",
  setup() {
    api.addEventListener("comfyume_status", (e) => {
      const d = e.detail || {};
      show(d.text || d.state || "");
      const el = badge();
      el.dataset.state = d.state || "";
      el.dataset.promptId = d.prompt_id || "";
      if (d.position !== undefined) el.dataset.position = String(d.position);
      else delete el.dataset.position;
    });
    api.addEventListener("execution_start", hide);
    api.addEventListener("executing", (e) => {
      if (e.detail === null || (e.detail && e.detail.node === null)) hide();
    });
  },
});
