//! Skiff's eBPF Service load balancer, user-space side.
//!
//! Services and EndpointSlices (from a file or the API server) go through a pure function ([`desired`]) to the
//! desired map contents ([`model::LbTables`]); the planner ([`plan`]) turns the difference to what is programmed
//! ([`registry`]) into ordered map writes ([`ops`]); the applier ([`applier`]) performs them on the pinned maps of
//! the loaded programs ([`loader`]) and keeps metrics ([`metrics`]). The kernel side lives in `ebpf/programs`, the
//! shared map layout in `ebpf/common`. See `docs/lb.md`.
#![deny(missing_docs)]

pub mod applier;
pub mod config;
pub mod desired;
pub mod engine;
pub mod error;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod nat;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod registry;
pub mod source;
pub mod store;

pub use config::LbConfig;
pub use engine::Engine;
pub use error::LbError;
pub use model::LbTables;
pub use source::{api::run_from_api, file::run_from_file};
