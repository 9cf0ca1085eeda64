#!/usr/bin/env bash
# The test command (README.md): installs what the tests need when missing, then runs them all.
#   Chromium: Debian package (Playwright's own browser download is not used).
#   playwright-core, mediasoup-client and esbuild (bundles it at test time): npm ci in tests/browser.
#   Janus (Debian package): the load runner's side-by-side target.
#   coturn (Debian package): the TURN server tests/turn.rs starts on loopback.
#   nftables (Debian package): drops UDP in the namespace of tests/ice_tcp_browser.rs.
#   Redis (multi-node tests) and PostgreSQL (audit tests): started on 127.0.0.1 when down.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x /usr/bin/janus ]; then
  echo "== installing janus (apt; the load runner's comparison target)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq janus >/dev/null || { apt-get update -qq && apt-get install -y -qq janus >/dev/null; }
fi
if [ ! -x /usr/bin/turnserver ]; then
  echo "== installing coturn (apt; tests/turn.rs checks TURN credentials against it)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq coturn >/dev/null || { apt-get update -qq && apt-get install -y -qq coturn >/dev/null; }
fi
if [ ! -x /usr/sbin/nft ]; then
  echo "== installing nftables (apt; tests/ice_tcp_browser.rs blocks UDP in a namespace)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq nftables >/dev/null || { apt-get update -qq && apt-get install -y -qq nftables >/dev/null; }
fi
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/mediasoup-client ] \
  || [ ! -d tests/browser/node_modules/esbuild ]; then
  echo "== npm ci (tests/browser)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "== starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
fi
if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  echo "== starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -q && break; sleep 1; done
fi

# No arguments: every crate of the workspace (the server's tests plus testkit's and loadrun's unit
# tests). With arguments (e.g. `--test forwarding`) they go to `cargo test` as given.
if [ "$#" -eq 0 ]; then
  cargo test --workspace
else
  cargo test "$@"
fi
