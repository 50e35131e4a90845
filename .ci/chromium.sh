#!/usr/bin/env bash
# Install Debian's headless-capable `chromium` (for tests/test_html_report.py). Idempotent: does
# nothing when a chromium binary is already on PATH. Runs as root (CI) or via sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
echo "chromium installed: $(chromium --version 2>/dev/null || echo unknown version)"
