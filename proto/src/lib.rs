//! Steward's wire types and their validation: the only place where the API's serde types live.
//!
//! Both the agent and the registry compile this crate. Inner types of either side stay in that
//! side; what crosses the wire is defined here.

pub mod access;
pub mod api;
pub mod endpoints;
pub mod history;
pub mod merge;
pub mod metrics_text;
pub mod node;
pub mod parse;
pub mod patterns;
pub mod quantity;
pub mod selector;
pub mod session;
pub mod spec;
pub mod validate;

pub use access::*;
pub use api::*;
pub use history::*;
pub use node::*;
pub use session::*;
pub use spec::*;
pub use validate::{Problem, ValidationErrors};
