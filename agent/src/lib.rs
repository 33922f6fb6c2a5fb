//! steward-agent: the on-host agent of a Steward fleet. See docs/ARCHITECTURE.md.

pub mod activity;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod facts;
pub mod heal;
pub mod host_ports;
pub mod metrics;
pub mod network;
pub mod pass;
pub mod payload;
pub mod reconcile;
pub mod reconciler;
pub mod standalone;
pub mod store;
pub mod vm;
pub mod watchdog;
pub mod workload;
