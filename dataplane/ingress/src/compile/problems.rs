//! Problems found while compiling: reported once, never fatal to the rest of the table.

use std::fmt;

/// The object a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `Ingress`, `Secret`, `Service`, …
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One thing the compiler skipped or worked around, attached to the Ingress it affects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    /// The Ingress that is affected (Events are recorded on it).
    pub ingress: ObjectRef,
    /// A CamelCase reason, as in a Kubernetes Event (`MissingService`, `HostConflict`, …).
    pub reason: &'static str,
    /// What a person needs to know.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.ingress, self.reason, self.message)
    }
}
