//! Guards for privileged tests (being written).
