#!/usr/bin/env bash
# Install Open WebUI without torch into its own venv under tools/openwebui/.work (git-ignored):
# the wheel with --no-deps, then the requirements pip resolves for it, each with --no-deps,
# leaving out torch, nvidia-*, triton and sentence-transformers (several GB that chat does not use).
# Also playwright's Python package (its browser download is never run: the OS's Chromium is used).
#
#   bash tools/openwebui/install.sh            # Open WebUI 0.12.4 by default
#   OPEN_WEBUI_VERSION=0.12.4 PYTHON=python3.11 bash tools/openwebui/install.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$here/.work"
version="${OPEN_WEBUI_VERSION:-0.12.4}"
python="${PYTHON:-python3.11}"
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  "$python" -m venv "$work/venv"
fi
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip
# What pip would install for open-webui, resolved from the index's metadata (no wheel is installed).
"${pip[@]}" install --dry-run --ignore-installed --report "$work/resolved.json" "open-webui==$version"
"$work/venv/bin/python" - "$work/resolved.json" "$work/requirements.txt" <<'PY'
import json, re, sys
skip = re.compile(r"^(torch|torchvision|torchaudio|nvidia-.*|triton|sentence-transformers)$")
report = json.load(open(sys.argv[1]))
pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"]
        if not skip.match(i["metadata"]["name"].lower())]
open(sys.argv[2], "w").write("\n".join(sorted(pins, key=str.lower)) + "\n")
print(f"{len(pins)} packages (of {len(report['install'])}) to install with --no-deps")
PY
"${pip[@]}" install --no-deps -r "$work/requirements.txt"
"${pip[@]}" install playwright
echo "installed: $("$work/venv/bin/open-webui" --help >/dev/null && echo open-webui $version) in $work/venv"
