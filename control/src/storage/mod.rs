//! Storage of API objects: a key-value store with global revisions, shaped after etcd v3.
//!
//! Every write gets the next global revision, which becomes the object's `metadata.resourceVersion`. The trait maps
//! one to one onto etcd: [`Storage::get`]/[`Storage::list`] are `Range` (with a prefix range and an optional
//! revision), [`Storage::create`]/[`Storage::update`]/[`Storage::delete`] are `Txn`s comparing `create_revision` or
//! `mod_revision`, [`Storage::watch`] is `Watch` from a revision, and [`Storage::compact`] is `Compact`.
//!
//! Backends: [`sqlite::SqliteStorage`] (embedded, the default) and, for several control-plane instances, etcd.
//! [`encrypt::Encrypted`] wraps either and encrypts chosen prefixes (Secrets) at rest.

pub mod encrypt;
pub mod etcd;
pub mod sqlite;
pub mod watch_cache;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

/// A global, monotonic store revision.
pub type Revision = i64;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The value (the object as JSON, possibly encrypted).
    pub value: Bytes,
    /// The revision that created the key.
    pub create_revision: Revision,
    /// The revision of the last change (for a deletion event: the revision of the deletion).
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a deletion, its last value with `mod_revision` the deletion's revision.
    pub kv: KeyValue,
    /// The key before the change, when it existed and is still known.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    /// Whether the key was created by this change.
    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.kv.create_revision == self.kv.mod_revision
    }
}

/// An event as every watcher of it receives it (one allocation shared by all), with a slot for what a reader derives
/// from it once for all of them (the API server keeps the decoded objects there, so 250 watchers of pods do not look
/// an event's objects up 250 times).
#[derive(Debug)]
pub struct SharedEvent {
    /// The change.
    pub event: Event,
    memo: std::sync::OnceLock<Box<dyn Memo>>,
    trimmed: std::sync::atomic::AtomicBool,
    indexed: std::sync::OnceLock<Indexed>,
}

/// A field watches select on that the watch cache reads from an event's stored objects once for all its watchers
/// (as the upstream watch cache indexes pods by `spec.nodeName`), so that a watch of one value (a kubelet's) is not
/// woken for the events of every other.
#[derive(Debug, Clone, Copy)]
pub struct Index {
    /// The field's name (an event keeps the values of one index; another is read again each time).
    pub field: &'static str,
    /// The field's value in a stored object as a field selector compares it (`""` when absent), or `None` when the
    /// value cannot be read: then the event reaches the watcher, whose own selector decides.
    pub value_of: fn(&[u8]) -> Option<String>,
}

/// A watch's requirement on an [`Index`]: the field equals `value` (a field selector's `field=value` term).
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The indexed field.
    pub index: Index,
    /// The value the watch selects.
    pub value: String,
}

/// The values of one index in an event's object and previous object.
#[derive(Debug)]
struct Indexed {
    field: &'static str,
    values: Vec<Option<String>>,
}

/// What readers keep in an event's slot. The watch cache tells it to let go once every watcher has passed the event
/// and it is far behind its type's newest ([`SharedEvent::trim`]), so the events a history keeps for late watchers
/// do not keep what was derived from them.
pub trait Memo: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Drops what the memo holds; readers after this derive it again themselves.
    fn trim(&self);
}

impl SharedEvent {
    /// Wraps an event for sharing.
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(SharedEvent {
            event,
            memo: std::sync::OnceLock::new(),
            trimmed: Default::default(),
            indexed: std::sync::OnceLock::new(),
        })
    }

    /// Whether the event may concern a watch with this trigger: its object or its previous object has the value, or
    /// one of them cannot be read. `false` means the watch's selector matches neither object, so it need not see
    /// the event. The values are read once per event (for the first index asked about).
    pub fn may_trigger(&self, trigger: &Trigger) -> bool {
        let read = || Indexed {
            field: trigger.index.field,
            values: std::iter::once(&self.kv).chain(&self.prev).map(|kv| (trigger.index.value_of)(&kv.value)).collect(),
        };
        let hit = |ix: &Indexed| ix.values.iter().any(|v| v.as_deref().is_none_or(|v| v == trigger.value));
        let indexed = self.indexed.get_or_init(read);
        if indexed.field == trigger.index.field { hit(indexed) } else { hit(&read()) }
    }

    /// The readers' slot, of the type the first reader chose (`None` when another type holds it, or once the event
    /// is trimmed: readers then derive what they need themselves).
    pub fn memo<T: Memo + Default>(&self) -> Option<&T> {
        if self.trimmed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let memo: &dyn std::any::Any = self.memo.get_or_init(|| Box::new(T::default())).as_ref();
        memo.downcast_ref()
    }

    /// Whether [`SharedEvent::trim`] was called.
    pub fn is_trimmed(&self) -> bool {
        self.trimmed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Lets go of what readers derived from the event (see [`Memo::trim`]).
    pub fn trim(&self) {
        self.trimmed.store(true, std::sync::atomic::Ordering::Release);
        if let Some(memo) = self.memo.get() {
            memo.trim();
        }
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// Options of a prefix listing.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Start at this key (inclusive) instead of the prefix itself (pagination).
    pub start: Option<String>,
    /// Return at most this many keys.
    pub limit: Option<usize>,
    /// Read as of this revision instead of the latest one (consistent pagination).
    pub revision: Option<Revision>,
}

/// A page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    /// Keys in order.
    pub items: Vec<KeyValue>,
    /// The revision the listing was read at.
    pub revision: Revision,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// A stream of changes, in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<SharedEvent>, StorageError>> + Send>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// `create` found the key already there.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key's `mod_revision` is not the expected one.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision found.
        actual: Revision,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction revision.
        compacted: Revision,
    },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// A value could not be decrypted.
    #[error("value of {key} could not be decrypted: {reason}")]
    Decrypt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The backend failed.
    #[error("{backend} backend: {operation}: {source}")]
    Backend {
        /// `sqlite` or `etcd`.
        backend: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A key-value store with global revisions and watches.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError>;

    /// Keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StorageError>;

    /// Creates `key`; fails with [`StorageError::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError>;

    /// Replaces `key` if its `mod_revision` is `expected`.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError>;

    /// Deletes `key` (if its `mod_revision` is `expected`, when given); returns its last value with the deletion
    /// revision as `mod_revision`.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StorageError>;

    /// Changes under `prefix` with revisions greater than `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError>;

    /// Forgets history up to and including `revision` (the latest value of each key stays).
    async fn compact(&self, revision: Revision) -> Result<(), StorageError>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision, StorageError>;

    /// The oldest revision a watch or a listing can start from.
    async fn compacted_revision(&self) -> Result<Revision, StorageError>;

    /// Claims this interval's compaction among every server sharing the store (see [`crate::compaction`]): wins
    /// when the shared claim key is still at `seen_version` (and then records `revision` in it), loses when another
    /// server claimed it first. A store only one server writes (SQLite) is always won.
    async fn claim_compaction(&self, seen_version: i64, revision: Revision) -> Result<Claim, StorageError> {
        let _ = revision;
        Ok(Claim { won: true, version: seen_version + 1, current: self.revision().await? })
    }
}

/// The outcome of [`Storage::claim_compaction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Whether this server claimed the interval (and compacts).
    pub won: bool,
    /// The claim key's version after the attempt.
    pub version: i64,
    /// The store's revision when the claim was decided.
    pub current: Revision,
}

/// A boxed store is a store (so wrappers such as encryption can sit on a backend chosen at run time).
#[async_trait::async_trait]
impl Storage for Box<dyn Storage> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        (**self).get(key).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StorageError> {
        (**self).list(prefix, opts).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError> {
        (**self).create(key, value).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError> {
        (**self).update(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StorageError> {
        (**self).delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        (**self).watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        (**self).compact(revision).await
    }

    async fn revision(&self) -> Result<Revision, StorageError> {
        (**self).revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, StorageError> {
        (**self).compacted_revision().await
    }

    async fn claim_compaction(&self, seen_version: i64, revision: Revision) -> Result<Claim, StorageError> {
        (**self).claim_compaction(seen_version, revision).await
    }
}

/// The end of the key range `[prefix, prefix_end(prefix))`, as etcd computes it.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\u{10ffff}".to_string()
}

#[cfg(test)]
pub(crate) mod conformance;
