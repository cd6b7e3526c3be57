//! Collections: the API the worker calls.

mod config;

pub use config::{CollectionConfig, Limits, MAX_DIM};
