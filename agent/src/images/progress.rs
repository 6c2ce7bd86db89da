//! Pull progress: the puller publishes how far a pull is on a `watch` channel, and [`report`] turns it into the
//! pod's Events: `Pulling image "…"` when the pull begins (as the kubelet), then every few seconds while it lasts,
//! how many bytes and blobs have arrived.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How far a pull is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullState {
    /// The pull has begun (the registry is being asked).
    pub started: bool,
    /// Bytes of the blobs to fetch (known once the manifest is read; blobs already stored are not counted).
    pub bytes_total: u64,
    /// Bytes fetched so far.
    pub bytes_done: u64,
    /// Blobs to fetch.
    pub blobs_total: u32,
    /// Blobs fetched and verified.
    pub blobs_done: u32,
}

/// Where a pull publishes its progress.
pub type ProgressTx = watch::Sender<PullState>;

/// How often a pull in progress is reported after its start.
pub const EVERY: Duration = Duration::from_secs(5);

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// The message of a progress event for `image`.
pub fn describe(image: &str, s: &PullState) -> String {
    if s.blobs_total == 0 {
        return format!("Pulling image {image:?}: reading the manifest");
    }
    format!(
        "Pulling image {image:?}: {} of {}, {} of {} blobs",
        mb(s.bytes_done),
        mb(s.bytes_total),
        s.blobs_done,
        s.blobs_total
    )
}

/// Emits the events of one pull of `image` as `rx` changes, until the sender is dropped: `Pulling image "…"` once
/// the pull starts (nothing when the image was present), then [`describe`] every `every` while it goes on.
pub async fn report<F, Fut>(mut rx: watch::Receiver<PullState>, image: String, every: Duration, mut emit: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if rx.borrow_and_update().started {
            break;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    emit(format!("Pulling image {image:?}")).await;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            // the pull ended (its sender is gone) before the next report
            () = until_closed(&mut rx) => return,
        }
        let state = *rx.borrow();
        emit(describe(&image, &state)).await;
    }
}

/// Resolves once the sender is dropped (changes are read by the caller; this only waits for the end).
async fn until_closed(rx: &mut watch::Receiver<PullState>) {
    while rx.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn messages_say_how_far_the_pull_is() {
        assert_eq!(
            describe("x:1", &PullState { started: true, ..Default::default() }),
            "Pulling image \"x:1\": reading the manifest"
        );
        let s =
            PullState { started: true, bytes_total: 40_000_000, bytes_done: 12_345_678, blobs_total: 5, blobs_done: 2 };
        assert_eq!(describe("x:1", &s), "Pulling image \"x:1\": 12.3 MB of 40.0 MB, 2 of 5 blobs");
    }

    async fn run(script: impl FnOnce(ProgressTx) -> tokio::task::JoinHandle<()>) -> Vec<String> {
        let (tx, rx) = watch::channel(PullState::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reporter = tokio::spawn(report(rx, "x:1".into(), Duration::from_secs(5), move |m| {
            sink.lock().expect("lock").push(m);
            async {}
        }));
        script(tx).await.expect("script");
        reporter.await.expect("reporter");
        Arc::try_unwrap(seen).expect("one owner").into_inner().expect("lock")
    }

    #[tokio::test(start_paused = true)]
    async fn a_present_image_makes_no_event() {
        let events = run(|tx| tokio::spawn(async move { drop(tx) })).await;
        assert!(events.is_empty(), "{events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_pull_says_pulling_once() {
        let events = run(|tx| {
            tokio::spawn(async move {
                tx.send_modify(|s| s.started = true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(tx);
            })
        })
        .await;
        assert_eq!(events, vec!["Pulling image \"x:1\"".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_pull_reports_its_progress_every_period() {
        let events = run(|tx| {
            tokio::spawn(async move {
                tx.send_modify(|s| s.started = true);
                tx.send_modify(|s| {
                    s.blobs_total = 2;
                    s.bytes_total = 10_000_000;
                });
                // updates half-way between the reports (at 1.5 s, 2.5 s, …), so none ties with one
                tokio::time::sleep(Duration::from_millis(500)).await;
                for step in 1..=12u64 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tx.send_modify(|s| {
                        s.bytes_done = (step * 800_000).min(10_000_000);
                        s.blobs_done = u32::from(step >= 6) + u32::from(step >= 12);
                    });
                }
                drop(tx);
            })
        })
        .await;
        assert_eq!(
            events,
            vec![
                "Pulling image \"x:1\"".to_string(),
                "Pulling image \"x:1\": 3.2 MB of 10.0 MB, 0 of 2 blobs".to_string(),
                "Pulling image \"x:1\": 7.2 MB of 10.0 MB, 1 of 2 blobs".to_string(),
            ]
        );
    }
}
