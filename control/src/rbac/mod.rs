//! Role-based access control as Kubernetes defines it, as pure functions: request attributes, rule matching,
//! the authorizer, the escalation check, the default roles and ClusterRole aggregation. The API server applies
//! them (`apiserver::authz`): it keeps the [`Policy`] up to date, authorizes every request before it touches
//! storage, and runs the aggregation and reconciliation plans.

pub mod aggregation;
pub mod attributes;
pub mod authorizer;
pub mod defaults;
pub mod policy;
pub mod rule;

pub use attributes::Attributes;
pub use authorizer::{Decision, decide, forbidden_message, not_held, rules};
pub use policy::Policy;
pub use rule::Rule;
