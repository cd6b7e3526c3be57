//! The worker against a fake coordinator over real loopback WebSockets, with real storage and keys
//! served over the socket.

mod fake;

/// Data round trips: collections, upsert, search, get, scroll, count, delete, rewrap, erase.
mod data;
/// INV-14: unassigned tenants, stale epochs, replayed ids and past deadlines are refused.
mod fencing;
/// INV-17 and malformed frames: bad input is refused clearly and the connection keeps serving.
mod input;
/// INV-24, INV-25: one tenant's expensive or oversized request leaves the connection, heartbeats and
/// other tenants alone, and stops at its deadline.
mod isolation;
/// The key service: errors become refusals, the worker holds no KEK.
mod keys;
/// Connection life: busy, reconnect, refused upgrade, shutdown and restart, memory budget.
mod lifecycle;
/// Tenant quotas.
mod quota;
/// Copying a tenant's files for a move: refused while assigned, hostile names and sizes refused.
mod transfer;
