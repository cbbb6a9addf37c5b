//! The write-ahead log of millpond: not built yet.
//!
//! This crate will hold the ring buffer, the batch flusher, the local segment and Apache Pulsar
//! sinks, and replay. Until then it holds nothing: state changes are captured through
//! `millpond_state::ChangeSink`, which the WAL will implement.
