//! vaultvec worker.
