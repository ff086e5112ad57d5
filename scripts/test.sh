#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, every crate's tests (SQLite and
# MariaDB, embedded log and Kafka), the black-box end-to-end tests, which start
# the real `clairon` binary against a real SMTP server (aiosmtpd), a local SMS
# endpoint and WebSocket clients, and the browser tests of the web interface.
# Installs what the tests need when it is missing. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

step "Checking prerequisites"
command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^${component}" \
      || rustup component add "$component" \
      || die "could not install the rustup component ${component}"
  done
fi
command -v python3 >/dev/null || die "python3 is required: the end-to-end tests' SMTP server runs on it"
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  step "Installing aiosmtpd (the SMTP server the end-to-end tests deliver to)"
  python3 -m pip install --quiet aiosmtpd \
    || python3 -m pip install --quiet --user --break-system-packages aiosmtpd \
    || die "could not install aiosmtpd with pip (try: python3 -m pip install aiosmtpd)"
  python3 -c 'import aiosmtpd' || die "aiosmtpd was installed but python3 cannot import it"
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The end-to-end tests run the binary from the same target directory.
step "cargo build -p clairon"
cargo build -p clairon

# The MySQL/MariaDB variants of the crates' tests and the distributed end-to-end
# tests need a MariaDB server and a Kafka broker: scripts/infra.sh installs them
# on first use and starts them. What this run started, it stops at the end.
if [[ -x scripts/infra.sh ]]; then
  step "Starting MariaDB and Kafka (scripts/infra.sh up)"
  if ! scripts/infra.sh status >/dev/null 2>&1; then
    trap 'step "Stopping MariaDB and Kafka"; scripts/infra.sh down || true' EXIT
  fi
  infra_env="$(scripts/infra.sh up)" || die "scripts/infra.sh up failed (its output is above)"
  eval "$infra_env"
fi

# Both suites run even when the first fails, so one run reports every failure.
failed=()

if [[ -x scripts/check-deploy.sh ]]; then
  step "Deployment files, checked offline (scripts/check-deploy.sh)"
  scripts/check-deploy.sh || failed+=("scripts/check-deploy.sh")
fi

step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast || failed+=("cargo test --workspace")

if [[ -x tests/browser/run.sh ]]; then
  step "Browser tests of the web interface (tests/browser/run.sh)"
  target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
  CLAIRON_BIN="${target_dir}/debug/clairon" tests/browser/run.sh || failed+=("tests/browser/run.sh")
fi

((${#failed[@]} == 0)) || die "failed: ${failed[*]}"
step "All checks passed"
