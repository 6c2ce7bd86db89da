//! A conformance suite every [`Storage`] backend must pass (SQLite in unit tests, etcd in integration tests).

use bytes::Bytes;
use futures::StreamExt;

use super::{EventKind, ListOptions, Storage, StorageError};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut super::WatchStream) -> super::Event {
    tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("no error")
        .event
        .clone()
}

/// Runs every check against an empty store.
pub async fn run(s: &dyn Storage) {
    let r0 = s.revision().await.expect("revision");

    // create, get, already exists
    let a = s.create("/t/a", b("1")).await.expect("create a");
    assert!(a.mod_revision > r0);
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(matches!(s.create("/t/a", b("x")).await, Err(StorageError::AlreadyExists { .. })));
    assert_eq!(s.get("/t/a").await.expect("get").expect("present").value, b("1"));
    assert!(s.get("/t/zzz").await.expect("get").is_none());

    // compare-and-swap update
    let a2 = s.update("/t/a", b("2"), a.mod_revision).await.expect("update");
    assert!(a2.mod_revision > a.mod_revision);
    assert_eq!(a2.create_revision, a.create_revision);
    match s.update("/t/a", b("3"), a.mod_revision).await {
        Err(StorageError::Conflict { expected, actual, .. }) => {
            assert_eq!((expected, actual), (a.mod_revision, a2.mod_revision))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(s.update("/t/none", b("1"), 1).await, Err(StorageError::NotFound { .. })));

    // list with pagination, isolated by prefix
    for k in ["b", "c", "d", "e"] {
        s.create(&format!("/t/{k}"), b(k)).await.expect("create");
    }
    s.create("/u/a", b("other prefix")).await.expect("create");
    let page1 = s.list("/t/", ListOptions { limit: Some(2), ..Default::default() }).await.expect("list");
    assert_eq!(page1.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/t/a", "/t/b"]);
    assert!(page1.more);
    let mut start = page1.items.last().expect("items").key.clone();
    start.push('\0');
    // a write between pages is not seen by the second page, which reads at the first page's revision
    s.create("/t/bb", b("late")).await.expect("create");
    let page2 = s
        .list("/t/", ListOptions { start: Some(start), limit: Some(10), revision: Some(page1.revision) })
        .await
        .expect("list page 2");
    assert_eq!(page2.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/t/c", "/t/d", "/t/e"]);
    assert!(!page2.more);
    assert_eq!(page2.revision, page1.revision);
    let all = s.list("/t/", ListOptions::default()).await.expect("list");
    assert_eq!(all.items.len(), 6);

    // watch from a past revision replays history, then follows live changes
    let mut w = s.watch("/t/", a.mod_revision).await.expect("watch");
    let first = next_event(&mut w).await;
    assert_eq!((first.kv.key.as_str(), first.kind), ("/t/a", EventKind::Put));
    assert_eq!(first.prev.as_ref().map(|p| p.value.clone()), Some(b("1")));
    for _ in 0..5 {
        next_event(&mut w).await; // b, c, d, e, bb
    }
    let deleted = s.delete("/t/b", None).await.expect("delete");
    let ev = next_event(&mut w).await;
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.kv.value, b("b"), "a deletion carries the last value");
    assert_eq!(ev.kv.mod_revision, deleted.mod_revision);
    assert!(s.get("/t/b").await.expect("get").is_none());
    assert!(matches!(s.delete("/t/b", None).await, Err(StorageError::NotFound { .. })));
    let c = s.get("/t/c").await.expect("get").expect("present");
    assert!(matches!(s.delete("/t/c", Some(c.mod_revision - 1)).await, Err(StorageError::Conflict { .. })));

    // many writes while a watcher is slow are all delivered, in order
    let base = s.revision().await.expect("revision");
    let mut w2 = s.watch("/m/", base).await.expect("watch");
    for i in 0..300 {
        s.create(&format!("/m/{i:04}"), b("x")).await.expect("create");
    }
    let mut last = base;
    for _ in 0..300 {
        let ev = next_event(&mut w2).await;
        assert!(ev.revision() > last, "revisions increase");
        last = ev.revision();
    }

    // compaction: old revisions are gone, latest values stay, watchers from before get Compacted
    let now = s.revision().await.expect("revision");
    s.compact(now).await.expect("compact");
    assert_eq!(s.compacted_revision().await.expect("compacted"), now);
    assert!(matches!(s.watch("/t/", a.mod_revision).await, Err(StorageError::Compacted { .. })));
    assert!(matches!(
        s.list("/t/", ListOptions { revision: Some(a.mod_revision), ..Default::default() }).await,
        Err(StorageError::Compacted { .. })
    ));
    assert_eq!(s.get("/t/a").await.expect("get").expect("present").value, b("2"));
    assert_eq!(
        s.list("/t/", ListOptions { revision: Some(now), ..Default::default() }).await.expect("list").items.len(),
        5
    );
}
