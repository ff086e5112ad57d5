//! Black-box tests: the real `clairon` binary, real SMTP/SMS/WebSocket peers.
//! All in one test binary so the workspace links it once.

mod helpers;
mod sms;
mod smtp;
mod ws;

mod audit;
mod crash_recovery;
mod dead_letters;
mod delivery;
mod distributed;
mod gateway;
mod health;
mod idempotency;
mod listing;
mod registration;
mod security;
