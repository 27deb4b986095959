#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium and its WebDriver, for the browser test of
# the `metaedge serve` operator page (tests/serve/test_page.py drives them with selenium; nothing is downloaded at
# run time). Idempotent: nothing happens when both are installed. Needs root and apt-get (CI runs as root on
# Debian); without them it says what to install and the browser test skips, saying why. Under CI (CI=true) a
# failed installation fails the run, so a green CI never hides a skipped browser test.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: chromium and chromium-driver are not installed (Debian: sudo apt-get install chromium chromium-driver);" \
       "the browser test of the operator page will be skipped" >&2
  exit 0
fi
echo "installing chromium + chromium-driver (Debian packages) for the operator page's browser test" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "error: apt-get could not install chromium chromium-driver" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
chromium --version >&2 || true
