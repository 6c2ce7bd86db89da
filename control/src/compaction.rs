//! History compaction shared by every server on one store, as kube-apiserver coordinates it: each server takes a
//! turn every interval at a claim key in the store (a compare-and-put on the key's version), the first to claim an
//! interval compacts, and what it compacts to is the revision it read one interval earlier — so a watch resumes
//! from any revision younger than one interval, however many servers there are, and the store is compacted once
//! per interval rather than once per server.
//!
//! [`next`] is the whole decision (state and claim in, new state and what to compact out); [`run`] carries it out.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::{Claim, Revision, Storage};

/// What one server remembers between its turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Turn {
    /// The claim key's version this server last saw; its next claim wins only if nobody claimed since.
    pub seen_version: i64,
    /// The revision it read at its last turn: what the next winning claim compacts to (0: none yet).
    pub candidate: Revision,
}

/// The turn after `claim`, and the revision to compact to if this server won an interval with a candidate.
pub fn next(turn: Turn, claim: Claim) -> (Turn, Option<Revision>) {
    let compact = (claim.won && turn.candidate > 0).then_some(turn.candidate);
    (Turn { seen_version: claim.version, candidate: claim.current }, compact)
}

/// Takes a turn every `interval` for the life of the server.
pub async fn run(store: Arc<dyn Storage>, interval: Duration) {
    let mut turn = Turn::default();
    loop {
        tokio::time::sleep(interval).await;
        let claim = match store.claim_compaction(turn.seen_version, turn.candidate).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming the compaction interval failed");
                continue;
            }
        };
        let (after, compact) = next(turn, claim);
        turn = after;
        if let Some(rev) = compact {
            match store.compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted"),
                Err(e) => tracing::warn!(error = %e, revision = rev, "compaction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(won: bool, version: i64, current: Revision) -> Claim {
        Claim { won, version, current }
    }

    #[test]
    fn the_first_claim_of_each_interval_compacts_to_the_revision_read_one_interval_earlier() {
        let cases = [
            // (turn before, claim, turn after, compaction)
            (
                "first turn ever: nothing read before, nothing to compact",
                Turn::default(),
                claim(true, 1, 100),
                Turn { seen_version: 1, candidate: 100 },
                None,
            ),
            (
                "won with a candidate",
                Turn { seen_version: 1, candidate: 100 },
                claim(true, 2, 250),
                Turn { seen_version: 2, candidate: 250 },
                Some(100),
            ),
            (
                "lost: another server claimed; learn its version",
                Turn { seen_version: 1, candidate: 100 },
                claim(false, 4, 260),
                Turn { seen_version: 4, candidate: 260 },
                None,
            ),
            (
                "lost on the first turn (servers started together)",
                Turn::default(),
                claim(false, 7, 90),
                Turn { seen_version: 7, candidate: 90 },
                None,
            ),
        ];
        for (name, before, c, after, compact) in cases {
            assert_eq!(next(before, c), (after, compact), "{name}");
        }
    }

    #[test]
    fn three_servers_compact_once_per_interval_between_them() {
        // a shared claim key simulated by its version: the first claim of an interval at the current version wins
        let mut version = 0;
        let mut turns = [Turn::default(); 3];
        let mut compactions = Vec::new();
        for interval in 1..=5i64 {
            for t in &mut turns {
                let won = t.seen_version == version;
                if won {
                    version += 1;
                }
                let (after, compact) = next(*t, claim(won, version, interval * 100));
                *t = after;
                compactions.extend(compact);
            }
        }
        // interval 1 has no candidate yet; afterwards one compaction per interval, to the revision of the one
        // before (the winner's own reading of it)
        assert_eq!(compactions, vec![100, 200, 300, 400]);
    }
}
