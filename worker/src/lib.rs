//! vaultvec worker: dials the coordinator over WebSocket and serves the tenants it assigns from the
//! storage engine.
//!
//! The entry point is [`serve`] with a [`Config`]. The worker never listens on a port: it dials
//! `coordinator_url` (`ws://`, or `wss://` with TLS), authenticates with its token in the upgrade request, says `Hello`, and then
//! answers the coordinator's requests (`AssignTenant`, `ReleaseTenant`, `TenantRequest`) as the
//! protocol in `proto/proto/vaultvec/cluster/v1/cluster.proto` spells out.
//!
//! # Modules
//!
//! - `server`: the connection loop (hello, heartbeats, reconnect, assignments, fencing, replay and
//!   deadline checks, backpressure, graceful shutdown).
//! - `op`: one tenant request against the engine, with the tenant quotas.
//! - `convert`: wire types to storage types and back; bounds are checked before allocation.
//! - `keys`: the key service as a client of the coordinator; the worker never holds a KEK.
//! - `tls`: the rustls client configuration for `wss://` (ring provider; verification always on).
//! - `tenant`: per-tenant gates, last use, and the memory budget.
//! - `error`: the one error type and the one mapping to wire error codes.
//!
//! # Invariants
//!
//! - A tenant request is served only for a tenant assigned on the current connection, under the
//!   assignment's epoch, with a fresh request id and before its deadline (INV-14).
//! - Every vector, batch size, `top_k` and `ef` is checked before work is allocated for it (INV-17).
//! - A search answer is complete or an error; `partial` is always false (INV-21).
//! - Keys, tokens and vectors are never logged.

mod backoff;
mod config;
mod convert;
mod error;
mod keys;
mod op;
mod replay;
mod server;
mod tenant;
mod tls;

pub use config::{Config, RequestHook};
pub use error::{Error, Result};
pub use server::{GATE_THREAD, MAX_FRAME_BYTES, check_connection, serve};
pub use tenant::{Clock, SystemClock};
