//! vaultvec coordinator: the public face of the cluster.
//!
//! So far this crate holds API-key authentication (`auth`); the gRPC/HTTP service layer, tenants and
//! tiers, routing to workers, the key service and the audit chain follow (issue 3).

pub mod audit;
pub mod auth;
pub mod store;
