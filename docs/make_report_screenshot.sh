#!/usr/bin/env bash
# Screenshot of the demo report for the README (after `make demo`; needs Debian's chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1100,1700 --screenshot=docs/report.png "file://$PWD/outputs/demo/report.html"
rm -rf "$profile"
