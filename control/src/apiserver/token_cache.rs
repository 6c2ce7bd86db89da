//! A short-lived cache of verified service-account tokens, as kube-apiserver's cached token authenticator: a token
//! seen in the last [`TTL`] skips its signature check and the lookups of its service account and bound pod. The
//! cost: a deleted service account or pod keeps its tokens working for up to [`TTL`] (upstream: 10 s as well).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::auth::User;

/// How long a verified token is trusted without checking again.
pub const TTL: Duration = Duration::from_secs(10);
/// Entries kept at most (the cache starts over beyond it).
const CAPACITY: usize = 16_384;

struct Entry {
    user: User,
    until: Instant,
}

/// Verified tokens by their SHA-256 (the tokens themselves are not kept).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// The user of a token verified less than [`TTL`] ago (and not expired since), if any.
    pub fn get(&self, token: &str, now: Instant) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&key(token)).filter(|e| e.until > now).map(|e| e.user.clone())
    }

    /// Remembers a verified token until `TTL` from `now` or `expires`, whichever comes first.
    pub fn put(&self, token: &str, user: User, now: Instant, expires: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, e| e.until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key(token), Entry { user, until: (now + TTL).min(expires) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_last_the_ttl_or_the_token_whichever_is_shorter() {
        let c = TokenCache::default();
        let u = User { name: "system:serviceaccount:a:b".into(), groups: vec![] };
        let t0 = Instant::now();
        c.put("tok", u.clone(), t0, t0 + Duration::from_secs(3600));
        assert_eq!(c.get("tok", t0 + Duration::from_secs(9)), Some(u.clone()));
        assert_eq!(c.get("tok", t0 + TTL), None);
        assert_eq!(c.get("other", t0), None);
        c.put("short", u.clone(), t0, t0 + Duration::from_secs(2));
        assert_eq!(c.get("short", t0 + Duration::from_secs(3)), None, "never past the token's expiry");
    }
}
