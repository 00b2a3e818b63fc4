#!/usr/bin/env bash
# A three-turn chat about a chart in Open WebUI's own UI (headless Chromium) against `llamadoc serve`
# with the tiny generated Llama 3.2 Vision model. Install first: bash tools/openwebui/install.sh
#
#   bash tools/openwebui/run.sh        # writes tools/openwebui/.work/openwebui.png (not committed)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$here/.work"
python="${PYTHON:-python3.11}"
llamadoc_port="${LLAMADOC_PORT:-11545}"
webui_port="${WEBUI_PORT:-8580}"
[ -x "$work/venv/bin/open-webui" ] || { echo "run tools/openwebui/install.sh first" >&2; exit 2; }
[ -x /usr/bin/chromium ] || { echo "install Chromium from the OS packages: apt-get install -y chromium" >&2; exit 2; }
mkdir -p "$work/models" "$work/data"

# The tiny Llama 3.2 Vision (converted from the test fixture) and a chart.
(cd "$repo" && PYTHONPATH="$repo" "$python" - "$work" <<'PY'
import sys
from pathlib import Path
from tests.mllama_helpers import convert_fixture, fixture_image
work = Path(sys.argv[1])
if not (work / "models/tiny-mllama.gguf").exists():
    convert_fixture("tiny", work / "models/tiny-mllama.gguf", "Q8_0")
fixture_image("square").save(work / "chart.png")
PY
)

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

(cd "$repo" && LLAMADOC_HOME="$work/home" LLAMADOC_OFFLINE=1 PYTHONPATH="$repo" exec "$python" -m llamadoc serve \
  --model "$work/models/tiny-mllama.gguf" --guard off --port "$llamadoc_port" --ctx 4096 --max-tokens 64 \
  --threads 1) 2> "$work/llamadoc.log" &
pids+=($!)

# Open WebUI's defaults, with what a machine without the internet needs: no account, no embedding
# model, no OpenAI connection, no update check.
(cd "$work" && DATA_DIR="$work/data" OFFLINE_MODE=true HF_HUB_OFFLINE=1 BYPASS_EMBEDDING_AND_RETRIEVAL=true \
  WEBUI_AUTH=false ENABLE_OPENAI_API=false OLLAMA_BASE_URL="http://127.0.0.1:$llamadoc_port" \
  ENABLE_VERSION_UPDATE_CHECK=false ANONYMIZED_TELEMETRY=false DO_NOT_TRACK=true SCARF_NO_ANALYTICS=true \
  exec "$work/venv/bin/open-webui" serve --host 127.0.0.1 --port "$webui_port") > "$work/openwebui.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$webui_port/health" > /dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$webui_port/health" > /dev/null || { tail -30 "$work/openwebui.log" >&2; exit 1; }

"$work/venv/bin/python" "$here/drive.py" --url "http://127.0.0.1:$webui_port" \
  --model "$work/models/tiny-mllama.gguf" --image "$work/chart.png" --log "$work/llamadoc.log" \
  --shot "$work/openwebui.png"
