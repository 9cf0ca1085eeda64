#!/usr/bin/env bash
# The test command (README.md): installs what the tests need when missing, then runs them all.
#   Chromium: Debian package (Playwright's own browser download is not used).
#   playwright-core: npm ci in tests/browser.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== npm ci (tests/browser)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

cargo test "$@"
