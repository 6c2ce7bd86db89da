//! NetworkPolicy in eBPF (see `docs/network-policy.md`).
//!
//! The same shape as the balancer: a pure compiler ([`compile`]) from NetworkPolicies, Pods and Namespaces to the
//! desired map contents ([`model::PolicyTables`]); a planner ([`plan`]) from what is programmed to ordered writes
//! that never open more than the old or the new state allows; a thin executor ([`maps`]) on the pinned maps; and
//! the attachment of the two programs (`skiff_pol_from_pod`, `skiff_pol_to_pod`) to each pod's host-side veth
//! ([`attach`]).

pub mod attach;
pub mod compile;
pub mod enforcer;
pub mod identity;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod ports;
pub mod report;
#[cfg(test)]
mod tests;

pub use compile::{Compiled, NodeView, compile};
pub use enforcer::Enforcer;
pub use maps::{PolicyMaps, Verdicts};
pub use model::{Direction, PolicyNames, PolicyTables};
pub use plan::{PolicyOp, Programmed, plan};
