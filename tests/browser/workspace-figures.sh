#!/usr/bin/env bash
# Workspace figures on this machine: the server's RSS with 20 users each with their ComfyUI workspace
# open in headless Chromium (20 browser contexts), and the p50 of 10 first loads (navigation to graph
# ready). Starts its own SIMULATED worker and `comfyume serve` on free loopback ports in a temporary data
# directory, and stops both (by PID) at the end.
# Usage: tests/browser/workspace-figures.sh [path/to/comfyume]   (default: target/release, else debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-}
if [[ -z "$bin" ]]; then
    if [[ -x target/release/comfyume ]]; then bin=target/release/comfyume; else bin=target/debug/comfyume; fi
fi
wheel=${COMFYUME_FRONTEND_WHEEL:-tests/browser/wheels/comfyui_frontend_package-1.58.1-py3-none-any.whl}
users=${USERS:-20}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
worker_port=$(free_port)
server_port=$(free_port)
"$bin" frontend install --wheel "$wheel" --data-dir "$dir" >/dev/null
for i in $(seq 1 "$users"); do
    echo "password-user$i" | "$bin" users add "user$i" --password-stdin --data-dir "$dir" >/dev/null 2>&1
done
cat > "$dir/comfyume.toml" <<TOML
listen = "127.0.0.1:$server_port"
data_dir = "$dir"
[store]
backend = "memory"
[[providers]]
kind = "comfyui"
name = "sim"
urls = ["http://127.0.0.1:$worker_port"]
TOML
"$bin" sim-worker --port "$worker_port" --exec-ms 200 >"$dir/worker.log" 2>&1 &
pids+=($!)
"$bin" serve --config "$dir/comfyume.toml" >"$dir/server.log" 2>&1 &
server_pid=$!
pids+=($server_pid)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$server_port/health" >/dev/null && break; sleep 0.2; done
echo "binary: $bin; machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p target/tmp/browser/figures
COMFYUME_URL="http://127.0.0.1:$server_port" COMFYUME_ARTIFACTS=target/tmp/browser/figures \
    SERVER_PID=$server_pid USERS=$users LOADS=${LOADS:-10} node tests/browser/workspace-figures.mjs
