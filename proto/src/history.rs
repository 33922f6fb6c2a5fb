//! Spec history: the versions of a node's own spec and of a fragment the registry keeps
//! (`GET …/history`), and the body of a revert.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::NodeSpec;

/// One kept version of a node's own spec or of a fragment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpecVersion {
    /// 1, 2, 3… per node or fragment name, in the order written.
    pub seq: u64,
    /// A node: its generation once this spec was written. A fragment: its revision.
    pub generation: u64,
    pub time: DateTime<Utc>,
    /// Who wrote it (a credential's name, `admin-token`, a JWT's subject).
    pub author: String,
    /// What happened: `written`, `reverted to generation 3`, `deleted`...
    pub note: String,
    /// The content; absent when a fragment was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NodeSpec>,
    /// A fragment's selector (absent for a node, and when deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `POST /v1/nodes/{id}/spec/revert` and `POST /v1/fragments/{name}/revert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertSpec {
    /// A node: the generation whose own spec to write again (the own spec in force at that
    /// generation). A fragment: the revision to write again.
    pub to: u64,
}
