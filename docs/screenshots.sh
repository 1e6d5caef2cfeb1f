#!/usr/bin/env bash
# Screenshots of the built site, for a look at the result (not part of CI).
# Needs Debian's chromium (apt-get install -y chromium) and a built site (make docs).
# Usage: docs/screenshots.sh [OUTDIR]   (default: docs/_build/screenshots)
set -euo pipefail
cd "$(dirname "$0")"
html="$PWD/_build/html"
out="${1:-_build/screenshots}"
mkdir -p "$out"
[ -f "$html/index.html" ] || { echo "no site in $html: run make docs first" >&2; exit 1; }
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }

shot() {  # shot NAME PAGE: the page at 1280 px wide, 2000 px tall
    # --virtual-time-budget lets MathJax typeset before the capture; no network is used.
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --virtual-time-budget=5000 --window-size=1280,2000 \
        --screenshot="$out/$1.png" "file://$html/$2" 2>/dev/null
    echo "$out/$1.png"
}
shot home index.html
shot model guide/model.html
shot gallery-inverse-problem auto_examples/inverse_problem.html
shot api-gaussian-mixture api/generated/mixture_density.GaussianMixture.html
shot cli cli.html
