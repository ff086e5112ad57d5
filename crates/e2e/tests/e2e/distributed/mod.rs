//! Distributed mode: each service its own `clairon serve --services <name>`
//! process, on the real Kafka and MariaDB started by `scripts/infra.sh`.
//! Every cluster gets its own topic prefix and its own database, so tests never
//! see each other's data.

mod cluster;

mod faults;
mod flows;
mod poison;
mod replicas;
mod revocation;
mod rolling;
