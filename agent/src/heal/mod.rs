//! Self-healing building blocks: the escalation ladder (`ladder.rs`, pure) and health probes
//! (`probe.rs`: TCP and HTTP probes, the pure result tracker). The reconciler
//! drives them and the drivers carry out their steps.

pub mod ladder;
pub mod probe;
