//! The agent's error type.

/// Why the agent (or one of its parts) failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or failed a request.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    /// Pod networking failed.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// The kubelet endpoint or DNS could not start.
    #[error("serving {what}: {message}")]
    Serve {
        /// Which endpoint.
        what: &'static str,
        /// Why.
        message: String,
    },
}

impl AgentError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let context = context.into();
        move |source| AgentError::Io { context, source }
    }

    /// An API error with context.
    pub fn api(context: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
        let context = context.into();
        move |source| AgentError::Api { context, source: Box::new(source) }
    }
}
