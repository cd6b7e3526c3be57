//! Point payloads and search filters.
