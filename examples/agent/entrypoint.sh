#!/bin/sh
# Example entrypoint of a serverless GPU container for comfyume's async-inference mode: an unmodified
# ComfyUI on loopback, and the `comfyume agent` beside it answering the platform on port 8000
# (POST /comfyume/run, GET /health). Point the deployment's port and health check at 8000, /health.
#
#   COMFYUI_DIR     where ComfyUI is installed (default /opt/ComfyUI)
#   WARMUP          a workflow (API format) run once before the agent reports healthy (optional)
set -eu

COMFYUI_DIR="${COMFYUI_DIR:-/opt/ComfyUI}"

python "$COMFYUI_DIR/main.py" --listen 127.0.0.1 --port 8188 &
comfyui=$!

if [ -n "${WARMUP:-}" ]; then
  comfyume agent --listen 0.0.0.0:8000 --comfyui http://127.0.0.1:8188 --warmup "$WARMUP" &
else
  comfyume agent --listen 0.0.0.0:8000 --comfyui http://127.0.0.1:8188 &
fi
agent=$!

# On SIGTERM (scale-down), the agent turns unhealthy and finishes the job it runs; then ComfyUI stops.
stop() {
  kill -TERM "$agent" 2>/dev/null || true
  wait "$agent" || true
  kill -TERM "$comfyui" 2>/dev/null || true
  wait "$comfyui" || true
}
trap stop TERM INT

# Whichever stops first ends the container, so the platform replaces it.
while kill -0 "$agent" 2>/dev/null && kill -0 "$comfyui" 2>/dev/null; do
  sleep 1
done
stop
