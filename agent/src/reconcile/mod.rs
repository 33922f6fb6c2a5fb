//! Reconciliation: observe → plan → apply → report. `plan` is pure; the drivers do the I/O.

pub mod leases;
pub mod plan;
pub mod policy;
pub mod types;
pub mod volumes;

pub use plan::plan;
pub use policy::Policy;
pub use types::{Action, Observed, ObservedConfig, ObservedContainer, Plan, Verdict};
