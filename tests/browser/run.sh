#!/usr/bin/env bash
# Browser tests of the web interface: headless Chromium (Debian's package)
# driven by playwright-core, against the real `clairon` binary.
# Installs what they need when it is missing (npm packages from the lock file,
# chromium through apt), builds the binary, runs every *.test.mjs here one file
# at a time. Exits non-zero on any failure. Screenshots of each page land in
# target/browser-screenshots/.
#
# Environment: CLAIRON_BIN (binary under test, default target/debug/clairon,
# then not rebuilt), CHROMIUM_PATH (default /usr/bin/chromium),
# BROWSER_CLAIRON_LOG (the binary's log filter), KEEP_DATA=1 (keep data folders).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'tests/browser/run.sh: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null || die "node (20 or later) is required"
command -v npm >/dev/null || die "npm is required"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "node 20 or later is required (found $(node --version))"

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  step "Installing chromium (Debian package)"
  command -v apt-get >/dev/null || die "$CHROMIUM is missing and apt-get is not available: install chromium"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || die "could not install chromium with apt-get"
  [ -x "$CHROMIUM" ] || die "chromium was installed but $CHROMIUM is still missing"
fi

step "npm ci (playwright-core, pinned in package-lock.json)"
cd "$HERE"
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ -z "${CLAIRON_BIN:-}" ]; then
  step "cargo build -p clairon"
  (cd "$ROOT" && cargo build -p clairon)
fi

step "node --test (browser tests)"
mkdir -p "$ROOT/target/browser-screenshots"
# One file at a time: each starts its own clairon processes and browser.
node --test --test-concurrency=1 --test-timeout=600000 ./*.test.mjs
echo "Screenshots: $ROOT/target/browser-screenshots/"
