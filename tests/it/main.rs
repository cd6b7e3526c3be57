//! Integration tests: a real coordinator and real workers on loopback, driven by real HTTP and
//! gRPC clients.

mod audit;
mod auth;
mod billing;
mod cluster;
mod cold;
mod dashboard;
mod fleet;
mod grpc_routes;
mod hardening;
mod idempotency;
mod idle;
mod jobs;
mod key_service;
mod memory;
mod outbound;
mod preauth;
mod privacy;
mod python;
mod recovery;
mod replication;
mod request_log;
mod restore_crash;
mod restore_into;
mod routes;
mod schema;
mod search;
mod secrets;
mod snapshot_archive;
mod snapshot_store;
mod snapshots;
mod tenancy;
mod tls;
mod validation;
