//! Request headers as the rules read them, over either transport's representation: Pingora's [`http::HeaderMap`]
//! or the fast path's parsed [`httparse::Header`] lines.

/// The headers of a request, looked up by name (any case).
pub trait RequestHeaders {
    /// Every value of the header `name`, in the order received.
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's;

    /// The first value of `name` as text (`None` when absent or not UTF-8).
    fn value<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.values(name).next().and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of cookie `name` in the request's `Cookie` headers.
    fn cookie(&self, name: &str) -> Option<&str> {
        self.values("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

impl RequestHeaders for http::HeaderMap {
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.get_all(name).into_iter().map(http::HeaderValue::as_bytes)
    }
}

impl RequestHeaders for [httparse::Header<'_>] {
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_representations_read_alike() {
        let mut map = http::HeaderMap::new();
        map.append("X-Canary", http::HeaderValue::from_static("always"));
        map.append("Cookie", http::HeaderValue::from_static("a=1; sticky=abc"));
        map.append("Cookie", http::HeaderValue::from_static("b=2"));
        let lines = [
            httparse::Header { name: "x-canary", value: b"always" },
            httparse::Header { name: "COOKIE", value: b"a=1; sticky=abc" },
            httparse::Header { name: "Cookie", value: b"b=2" },
        ];
        assert_eq!((map.value("x-canary"), lines[..].value("X-Canary")), (Some("always"), Some("always")));
        assert_eq!((map.cookie("sticky"), lines[..].cookie("sticky")), (Some("abc"), Some("abc")));
        assert_eq!((map.cookie("b"), lines[..].cookie("b")), (Some("2"), Some("2")));
        assert_eq!((map.cookie("c"), lines[..].cookie("c")), (None, None));
        assert_eq!(lines[..].value("missing"), None);
    }
}
