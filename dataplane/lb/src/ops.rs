//! Map operations, in the order the applier must perform them.

use std::sync::Arc;

use skiff_ebpf_common::{AffinityMatchKey, Backend, ServiceKey, ServiceValue};

use crate::model::BackendAddr;

/// One write to the maps. A plan lists them so that a reader of the maps never sees a frontend whose header names a
/// slot, table or backend that does not exist: backends, memberships and tables are written before the slots and
/// headers that name them, and deleted after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes (or rewrites) a backend.
    PutBackend {
        /// Its id.
        id: u32,
        /// Its value.
        value: Backend,
    },
    /// Records that a backend belongs to a service port (validates affinity).
    PutMembership(AffinityMatchKey),
    /// Zeroes the counters of a newly allocated service port id.
    ResetServiceStats(u32),
    /// Zeroes the counters of a newly allocated backend id.
    ResetBackendStats(u32),
    /// Builds a Maglev table of `size` entries over `backends` (sorted; with their ids) and publishes it under `id`
    /// with one write to the table map of its size class.
    CreateTable {
        /// The table id.
        id: u32,
        /// M.
        size: u32,
        /// The backends and their ids, in slot order.
        backends: Arc<Vec<(BackendAddr, u32)>>,
    },
    /// Writes a backend slot (slot > 0) of a frontend.
    PutSlot(ServiceKey, ServiceValue),
    /// Writes the header (slot 0) of a frontend: this publishes the frontend's new state.
    PutHeader(ServiceKey, ServiceValue),
    /// Removes the header of a frontend (no new connections are balanced by it afterwards).
    DeleteHeader(ServiceKey),
    /// Removes a slot.
    DeleteSlot(ServiceKey),
    /// Removes a table (the kernel frees it when the last reader is done).
    DeleteTable {
        /// The table id.
        id: u32,
        /// Its size M (selects the map).
        size: u32,
    },
    /// Removes a membership.
    DeleteMembership(AffinityMatchKey),
    /// Removes a backend.
    DeleteBackend(u32),
}

/// The phase an operation belongs to; a plan is sorted by phase.
pub(crate) fn phase(op: &Op) -> u8 {
    match op {
        Op::PutBackend { .. } => 0,
        Op::ResetServiceStats(_) | Op::ResetBackendStats(_) => 1,
        Op::PutMembership(_) => 2,
        Op::CreateTable { .. } => 3,
        Op::PutSlot(..) => 4,
        Op::PutHeader(..) => 5,
        Op::DeleteHeader(_) => 6,
        Op::DeleteSlot(_) => 7,
        Op::DeleteTable { .. } => 8,
        Op::DeleteMembership(_) => 9,
        Op::DeleteBackend(_) => 10,
    }
}
