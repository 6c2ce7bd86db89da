//! The crate's typed errors.

use std::path::PathBuf;

/// Everything that can go wrong in the load balancer.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// BPF cannot be used here (missing privileges, kernel too old, no bpffs). The balancer does not run without it
    /// rather than silently serving nothing.
    #[error("eBPF is not available: {reason}")]
    BpfUnavailable {
        /// What is missing, and how to fix it.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid load balancer configuration: {0}")]
    InvalidConfig(String),
    /// The BPF object could not be loaded.
    #[error("loading the BPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("program {program}: {action} failed")]
    Program {
        /// Which program.
        program: &'static str,
        /// What was attempted (load, attach to X, pin).
        action: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("map {map}: {op} failed")]
    Map {
        /// Which map.
        map: &'static str,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A link could not be pinned or replaced.
    #[error("pinning link {path}: {message}")]
    Link {
        /// The pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A pinned map does not match this version's layout or the configured size.
    #[error(
        "pinned map {map} is incompatible ({detail}); run `skiff lb --uninstall --pin-dir {}` to start over",
        pin_dir.display()
    )]
    IncompatiblePin {
        /// Which map.
        map: &'static str,
        /// How it differs.
        detail: String,
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The objects file could not be read.
    #[error("reading objects from {path}: {message}")]
    Objects {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Following the API server failed.
    #[error("watching {resource}: {message}")]
    Watch {
        /// Services or EndpointSlices.
        resource: &'static str,
        /// What happened.
        message: String,
    },
    /// Serving metrics failed.
    #[error("metrics server on {addr}: {source}")]
    Metrics {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl LbError {
    pub(crate) fn map(map: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        LbError::Map { map, op, source: Box::new(source) }
    }

    pub(crate) fn program(
        program: &'static str,
        action: impl Into<String>,
        source: aya::programs::ProgramError,
    ) -> Self {
        LbError::Program { program, action: action.into(), source: Box::new(source) }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LbError::Io { action, path: path.into(), source }
    }
}
