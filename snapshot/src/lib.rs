//! Snapshots of millpond state to object storage: not built yet.
//!
//! This crate will hold the data-file and manifest formats, the commit protocol, restore and
//! garbage collection. Until then it holds nothing.
