//! Names outside the cluster domain, forwarded to the node's resolvers (the `nameserver` lines of its
//! `/etc/resolv.conf`, or `--dns-upstream`), with a cache that honours the answers' TTLs, positive and negative, as
//! CoreDNS's `forward` and `cache` plugins do. The cache ([`Cache`]) is pure; [`Upstream`] is the I/O around it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

use crate::metrics::Metrics;

/// The longest a positive answer is kept (CoreDNS's cache default).
pub const MAX_POSITIVE: Duration = Duration::from_secs(3600);

/// The longest a negative answer is kept (CoreDNS's cache default).
pub const MAX_NEGATIVE: Duration = Duration::from_secs(1800);

/// How long a negative answer without an SOA is kept.
pub const DEFAULT_NEGATIVE: Duration = Duration::from_secs(30);

/// Answers kept at most; past it, expired ones go first, then the oldest.
pub const CACHE_ENTRIES: usize = 10_000;

/// What the upstream said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Records (TTLs as left at the time of the answer).
    Records(Vec<Record>),
    /// The name does not exist.
    NxDomain,
    /// The name exists, without records of this type.
    NoData,
    /// No answer (timeouts, refusals): SERVFAIL, not cached.
    Failed,
}

struct Entry {
    answer: Forwarded,
    stored: Instant,
    expires: Instant,
}

/// Answers by (name, type), each until its TTL runs out; when full, the oldest goes first (a queue of insertions
/// makes that O(1)).
pub struct Cache {
    entries: HashMap<(String, RecordType), Entry>,
    order: std::collections::VecDeque<((String, RecordType), Instant)>,
    max: usize,
}

impl Cache {
    /// A cache of at most `max` answers.
    pub fn new(max: usize) -> Self {
        Cache { entries: HashMap::new(), order: std::collections::VecDeque::new(), max: max.max(1) }
    }

    fn key(name: &Name, t: RecordType) -> (String, RecordType) {
        (name.to_ascii().to_ascii_lowercase(), t)
    }

    /// A cached answer at `now`, its records' TTLs lowered by the time spent in the cache.
    pub fn get(&mut self, name: &Name, t: RecordType, now: Instant) -> Option<Forwarded> {
        let key = Self::key(name, t);
        let e = self.entries.get(&key)?;
        if now >= e.expires {
            self.entries.remove(&key);
            return None;
        }
        let aged = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        Some(match &e.answer {
            Forwarded::Records(rs) => Forwarded::Records(
                rs.iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r.ttl = r.ttl.saturating_sub(aged);
                        r
                    })
                    .collect(),
            ),
            other => other.clone(),
        })
    }

    /// Keeps `answer` for `ttl` (a failure is not kept).
    pub fn put(&mut self, name: &Name, t: RecordType, answer: Forwarded, ttl: Duration, now: Instant) {
        if answer == Forwarded::Failed || ttl.is_zero() {
            return;
        }
        // the queue may name entries replaced or dropped since: those are skipped (bounded by the queue's length)
        while self.entries.len() >= self.max {
            let Some((key, stored)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|e| e.stored == stored) {
                self.entries.remove(&key);
            }
        }
        let key = Self::key(name, t);
        self.order.push_back((key.clone(), now));
        if self.order.len() > 2 * self.max {
            let live = &self.entries;
            self.order.retain(|(k, s)| live.get(k).is_some_and(|e| e.stored == *s));
        }
        self.entries.insert(key, Entry { answer, stored: now, expires: now + ttl });
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How long an answer may be kept: the smallest TTL of its records (positive), the negative TTL the upstream's SOA
/// gave (or [`DEFAULT_NEGATIVE`]), each within its maximum.
pub fn ttl_of(answer: &Forwarded, negative_ttl: Option<u32>) -> Duration {
    match answer {
        Forwarded::Records(rs) => {
            Duration::from_secs(u64::from(rs.iter().map(|r| r.ttl).min().unwrap_or(0))).min(MAX_POSITIVE)
        }
        Forwarded::NxDomain | Forwarded::NoData => {
            negative_ttl.map_or(DEFAULT_NEGATIVE, |s| Duration::from_secs(u64::from(s))).min(MAX_NEGATIVE)
        }
        Forwarded::Failed => Duration::ZERO,
    }
}

/// The `nameserver` addresses of a resolv.conf, port 53, leaving out `exclude` (the cluster DNS itself, which
/// would loop).
pub fn nameservers(resolv_conf: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let servers = resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53));
    without_self(servers, exclude)
}

/// Leaves out the addresses the cluster DNS itself answers on at port 53 (forwarding there would loop).
pub fn without_self(servers: impl IntoIterator<Item = SocketAddr>, own: &[IpAddr]) -> Vec<SocketAddr> {
    servers.into_iter().filter(|s| !(s.port() == 53 && own.contains(&s.ip()))).collect()
}

/// Whether the cluster DNS recurses for a client at `ip`: its pods, the node itself and loopback. Anyone else
/// reaching the node's port 53 gets cluster names only (REFUSED for others): an open resolver on the node's address
/// would serve reflection attacks.
pub fn may_recurse(ip: IpAddr, local: &[ipnet::IpNet]) -> bool {
    ip.is_loopback() || local.iter().any(|n| n.contains(&ip))
}

/// Query types never forwarded: ANY (amplification) and zone transfers.
pub fn forwardable(t: RecordType) -> bool {
    !matches!(t, RecordType::ANY | RecordType::AXFR | RecordType::IXFR)
}

/// Forwarded queries in flight at once; past it, SERVFAIL at once (a pod asking for random names must not take
/// the agent's descriptors).
pub const MAX_IN_FLIGHT: usize = 256;

/// The node's resolvers with a cache in front.
pub struct Upstream {
    resolver: hickory_resolver::Resolver<TokioRuntimeProvider>,
    cache: Mutex<Cache>,
    metrics: Metrics,
    in_flight: tokio::sync::Semaphore,
}

impl Upstream {
    /// Forwards to `servers` (tried in order, UDP then TCP for truncated answers).
    pub fn new(servers: &[SocketAddr], metrics: Metrics) -> Result<Self, crate::AgentError> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut opts = ResolverOpts::default();
        // answers are cached here, where hits and misses are counted, and asked for exactly as named
        opts.cache_size = 0;
        opts.ndots = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.recursion_desired = true;
        opts.preserve_intermediates = true;
        let resolver = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| crate::AgentError::Config(format!("the DNS forwarder: {e}")))?;
        Ok(Upstream {
            resolver,
            cache: Mutex::new(Cache::new(CACHE_ENTRIES)),
            metrics,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer for `name`/`t`, from the cache or the upstream.
    pub async fn resolve(&self, name: &Name, t: RecordType) -> Forwarded {
        if let Some(hit) = self.cache().get(name, t, Instant::now()) {
            self.metrics.dns_cache(true);
            return hit;
        }
        self.metrics.dns_cache(false);
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.metrics.dns_forward("SERVFAIL");
            return Forwarded::Failed;
        };
        let (answer, negative_ttl) = match self.resolver.lookup(name.clone(), t).await {
            Ok(l) => (Forwarded::Records(l.answers().to_vec()), None),
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
                let a =
                    if nr.response_code == ResponseCode::NXDomain { Forwarded::NxDomain } else { Forwarded::NoData };
                (a, nr.negative_ttl)
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "forwarding a DNS query failed");
                (Forwarded::Failed, None)
            }
        };
        self.metrics.dns_forward(match &answer {
            Forwarded::Records(_) => "NOERROR",
            Forwarded::NoData => "NODATA",
            Forwarded::NxDomain => "NXDOMAIN",
            Forwarded::Failed => "SERVFAIL",
        });
        let ttl = ttl_of(&answer, negative_ttl);
        self.cache().put(name, t, answer.clone(), ttl, Instant::now());
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::A;

    fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(Name::from_ascii(name).expect("name"), ttl, RData::A(A(ip.into())))
    }

    #[test]
    fn answers_are_kept_for_their_ttl_and_age_while_kept() {
        let mut c = Cache::new(10);
        let n = Name::from_ascii("db.example.com.").expect("name");
        let t0 = Instant::now();
        let answer = Forwarded::Records(vec![
            a("db.example.com.", 60, [192, 0, 2, 1]),
            a("db.example.com.", 30, [192, 0, 2, 2]),
        ]);
        let ttl = ttl_of(&answer, None);
        assert_eq!(ttl, Duration::from_secs(30), "the smallest record TTL");
        c.put(&n, RecordType::A, answer, ttl, t0);
        let Some(Forwarded::Records(rs)) =
            c.get(&Name::from_ascii("DB.Example.COM.").expect("name"), RecordType::A, t0 + Duration::from_secs(10))
        else {
            panic!("a hit, case-insensitively");
        };
        assert_eq!(rs.iter().map(|r| r.ttl).collect::<Vec<_>>(), vec![50, 20], "TTLs age in the cache");
        assert!(c.get(&n, RecordType::AAAA, t0).is_none(), "per type");
        assert!(c.get(&n, RecordType::A, t0 + Duration::from_secs(31)).is_none(), "expired");
        assert!(c.is_empty(), "an expired answer is dropped when met");
    }

    #[test]
    fn negative_answers_follow_the_soa_and_failures_are_not_kept() {
        assert_eq!(ttl_of(&Forwarded::NxDomain, Some(300)), Duration::from_secs(300));
        assert_eq!(ttl_of(&Forwarded::NoData, None), DEFAULT_NEGATIVE);
        assert_eq!(ttl_of(&Forwarded::NxDomain, Some(86_400)), MAX_NEGATIVE);
        assert_eq!(ttl_of(&Forwarded::Records(vec![a("x.", 86_400, [1, 2, 3, 4])]), None), MAX_POSITIVE);
        let mut c = Cache::new(10);
        let n = Name::from_ascii("x.example.").expect("name");
        c.put(&n, RecordType::A, Forwarded::Failed, Duration::from_secs(60), Instant::now());
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_makes_room_from_the_oldest() {
        let mut c = Cache::new(2);
        let t0 = Instant::now();
        for (i, name) in ["a.example.", "b.example.", "c.example."].iter().enumerate() {
            let n = Name::from_ascii(name).expect("name");
            c.put(&n, RecordType::A, Forwarded::NxDomain, Duration::from_secs(60), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(c.len(), 2);
        assert!(
            c.get(&Name::from_ascii("a.example.").expect("name"), RecordType::A, t0 + Duration::from_secs(3)).is_none()
        );
        assert!(
            c.get(&Name::from_ascii("c.example.").expect("name"), RecordType::A, t0 + Duration::from_secs(3)).is_some()
        );
    }

    #[test]
    fn only_local_clients_get_recursion_and_never_for_any_or_transfers() {
        let local: Vec<ipnet::IpNet> =
            vec!["10.244.1.0/24".parse().expect("net"), "10.0.0.11/32".parse().expect("net")];
        assert!(may_recurse("10.244.1.7".parse().expect("ip"), &local));
        assert!(may_recurse("10.0.0.11".parse().expect("ip"), &local));
        assert!(may_recurse("127.0.0.1".parse().expect("ip"), &local));
        assert!(!may_recurse("203.0.113.9".parse().expect("ip"), &local));
        assert!(!may_recurse("10.244.2.7".parse().expect("ip"), &local), "another node's pods ask their own node");
        assert!(forwardable(RecordType::A) && forwardable(RecordType::AAAA) && forwardable(RecordType::MX));
        assert!(!forwardable(RecordType::ANY) && !forwardable(RecordType::AXFR));
        let own = ["10.0.0.11".parse().expect("ip")];
        let given = [
            "10.0.0.11:53".parse().expect("addr"),
            "10.0.0.11:5353".parse().expect("addr"),
            "192.0.2.1:53".parse().expect("addr"),
        ];
        assert_eq!(without_self(given, &own), vec![given[1], given[2]]);
    }

    #[test]
    fn resolv_conf_nameservers_leave_the_cluster_dns_out() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver  10.96.0.10\nnameserver 2001:db8::53\noptions ndots:5\nnameserver bogus\n";
        let got = nameservers(text, &["10.96.0.10".parse().expect("ip")]);
        assert_eq!(got, vec!["192.0.2.53:53".parse().expect("addr"), "[2001:db8::53]:53".parse().expect("addr")]);
    }
}
