//! The request filter chain.

pub mod inflight;
pub mod requestinfo;
