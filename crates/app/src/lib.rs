//! billsync: gets billing events from edge devices to an IoT cloud platform reliably, and
//! says exactly why when the platform says no.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
#[cfg(test)]
mod memory;
pub mod metrics;
