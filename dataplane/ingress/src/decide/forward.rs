//! The edits of the head sent upstream, the same on both transports: hop-by-hop headers and the ones the ingress
//! sets are dropped from the client's, then the ingress's are added in one order.
//!
//! Upstream requests get `X-Forwarded-For` (the client address; incoming values are not trusted, as with
//! ingress-nginx's default `use-forwarded-headers: false`), `X-Real-IP`, `X-Forwarded-Proto`, `X-Scheme`,
//! `X-Forwarded-Host`, `X-Forwarded-Port` and `X-Request-ID` (kept from the client or generated); `Host` is
//! replaced when the route has `upstream-vhost`.

use std::net::IpAddr;

/// Request headers never passed upstream as received: hop-by-hop ones and the ones the ingress sets itself.
const DROPPED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-scheme",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-request-id",
];

/// What the ingress adds to a request on its way upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// Client address (`X-Forwarded-For`, `X-Real-IP`).
    pub client: Option<IpAddr>,
    /// The connection was TLS (`X-Forwarded-Proto`, `X-Scheme`).
    pub tls: bool,
    /// Local port the client connected to (`X-Forwarded-Port`).
    pub port: Option<u16>,
    /// The `Host` the client sent (`X-Forwarded-Host`).
    pub host: &'a [u8],
    /// `X-Request-ID` to send.
    pub request_id: &'a [u8],
    /// `Host` to send instead of the client's (`upstream-vhost`).
    pub vhost: Option<&'a [u8]>,
}

impl Forwarding<'_> {
    /// The client's headers left out of the upstream head, by name (lower case).
    pub fn dropped(&self) -> impl Iterator<Item = &'static str> {
        DROPPED.into_iter().chain(self.vhost.map(|_| "host"))
    }

    /// Whether the client's header `name` is left out of the upstream head.
    pub fn drops(&self, name: &str) -> bool {
        self.dropped().any(|d| name.eq_ignore_ascii_case(d))
    }

    /// Calls `add` with every header the ingress adds, in the order both transports write them.
    pub fn each(&self, mut add: impl FnMut(&'static str, &[u8])) {
        if let Some(v) = self.vhost {
            add("Host", v);
        }
        if let Some(ip) = self.client {
            let mut text = [0u8; 64];
            let ip = format_ip(ip, &mut text);
            add("X-Forwarded-For", ip);
            add("X-Real-IP", ip);
        }
        let scheme: &[u8] = if self.tls { b"https" } else { b"http" };
        add("X-Forwarded-Proto", scheme);
        add("X-Scheme", scheme);
        add("X-Forwarded-Host", self.host);
        if let Some(port) = self.port {
            let mut text = [0u8; 8];
            add("X-Forwarded-Port", format_u64(u64::from(port), &mut text));
        }
        add("X-Request-ID", self.request_id);
    }
}

fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").expect("an IP address fits in 64 bytes");
    let n = cursor.position() as usize;
    &buf[..n]
}

/// Decimal digits of `n` without allocating.
pub fn format_u64(mut n: u64, buf: &mut [u8]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(f: &Forwarding<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        f.each(|n, v| out.push((n.to_owned(), String::from_utf8_lossy(v).into_owned())));
        out
    }

    #[test]
    fn the_ingress_adds_its_headers_in_one_order() {
        let f = Forwarding {
            client: Some("10.0.0.9".parse().expect("ip")),
            tls: true,
            port: Some(443),
            host: b"Shop.example:443",
            request_id: b"r1",
            vhost: None,
        };
        let names: Vec<_> = added(&f).into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
        assert_eq!(
            names,
            [
                "X-Forwarded-For: 10.0.0.9",
                "X-Real-IP: 10.0.0.9",
                "X-Forwarded-Proto: https",
                "X-Scheme: https",
                "X-Forwarded-Host: Shop.example:443",
                "X-Forwarded-Port: 443",
                "X-Request-ID: r1",
            ]
        );
        assert!(f.drops("X-FORWARDED-FOR") && f.drops("connection") && !f.drops("host") && !f.drops("accept"));
        let v = Forwarding { vhost: Some(b"inner.svc"), client: None, ..f };
        assert_eq!(added(&v)[0], ("Host".to_owned(), "inner.svc".to_owned()));
        assert!(!added(&v).iter().any(|(n, _)| n == "X-Forwarded-For"), "no client, no X-Forwarded-For");
        assert!(v.drops("Host"));
    }

    #[test]
    fn numbers_are_formatted_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(format_u64(0, &mut buf), b"0");
        assert_eq!(format_u64(18446744073709551615, &mut buf), b"18446744073709551615");
    }
}
