//! Self-healing building blocks, pure: the escalation ladder (`ladder.rs`). The reconciler
//! drives them and the drivers carry out their steps.

pub mod ladder;
