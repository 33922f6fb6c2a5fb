//! steward-registry: the thin central registry of a Steward fleet (HTTP API, embedded store,
//! node health, events). See docs/ARCHITECTURE.md for the map.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod disk;
pub mod error;
pub mod events;
pub mod fleet;
pub mod fragment_set;
pub mod kv;
pub mod metrics;
pub mod migrate;
pub mod names;
pub mod nodes;
pub mod oidc;
pub mod payloads;
pub mod reenroll;
pub mod replica;
pub mod rollout;
pub mod schemas;
pub mod serve;
pub mod server;
pub mod sessions;
pub mod spec_gate;
pub mod specs;
pub mod state;
pub mod store;
pub mod ui;
