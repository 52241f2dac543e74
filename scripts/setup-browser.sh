#!/usr/bin/env bash
# Headless Chromium + chromedriver for the browser test of the run report
# (tests/test_report.py, marker `browser`). Installs the Debian packages when they are missing
# and this shell may (root, apt-get); otherwise it says that the browser test will be skipped
# (outside CI; with CI=true the test fails instead, so a missing browser cannot go unnoticed).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver for the browser test"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver
else
  echo "note: chromium/chromedriver not found and not installable here (needs root and" \
    "apt-get); the browser test of tests/test_report.py will be skipped"
fi
