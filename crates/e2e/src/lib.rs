//! Black-box end-to-end tests for Clairon.
//!
//! Everything lives in the `e2e` test binary (`tests/e2e/`): each test starts the
//! real `clairon` binary on port 0 with a fresh data directory, points it at a real
//! SMTP server (aiosmtpd) and a local SMS endpoint, and talks to it over HTTP and
//! WebSocket only. Build the binary first (`cargo build -p clairon`), or point
//! `CLAIRON_BIN` at one; `scripts/test.sh` does both steps.
