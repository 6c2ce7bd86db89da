//! The ingress fast path's HTTP/1 parsers on untrusted bytes: the request head (and the upstream head written from
//! it), where a request ends, the chunked body scanner (fed whole and byte by byte, which must agree) and the
//! response head relay and the HTTP/2 response made from the relayed head. The first byte picks the parser.
#![no_main]

use skiff_ingress::decide::forward::Forwarding;
use skiff_ingress::fast::chunked::Chunked;
use skiff_ingress::fast::{downstream, request, response};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else { return };
    match pick % 4 {
        0 => requests(input),
        1 => chunked(input),
        2 => responses(input, pick),
        _ => {
            if let Some(end) = request::request_end(input) {
                assert!(end <= input.len());
            }
        }
    }
});

fn requests(input: &[u8]) {
    let mut storage = [httparse::EMPTY_HEADER; request::MAX_HEADERS];
    if let request::Parsed::Fast(h) = request::parse(input, &mut storage) {
        assert!(h.head_len <= input.len());
        let _ = (h.path(), h.query(), h.idempotent());
        let fwd = Forwarding {
            client: Some("10.0.0.1".parse().expect("ip")),
            tls: false,
            port: Some(80),
            host: h.host.as_bytes(),
            request_id: b"id",
            vhost: None,
        };
        let mut out = Vec::new();
        request::write_upstream_head(&mut out, &h, h.target, &fwd);
        assert!(out.ends_with(b"\r\n\r\n"));
        let mut again = [httparse::EMPTY_HEADER; 128];
        let parsed = httparse::Request::new(&mut again).parse(&out);
        assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()), "the upstream head parses");
    }
}

fn chunked(input: &[u8]) {
    let mut whole = Chunked::new();
    let mut decoded_whole = Vec::new();
    let at_once = whole.feed_with(input, |d| decoded_whole.extend_from_slice(d));
    let mut bytewise = Chunked::new();
    let mut decoded_bytewise = Vec::new();
    let mut taken = 0;
    let mut failed = false;
    for b in input {
        if bytewise.is_done() {
            break;
        }
        match bytewise.feed_with(std::slice::from_ref(b), |d| decoded_bytewise.extend_from_slice(d)) {
            Ok(n) => taken += n,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match at_once {
        Ok(n) => {
            assert!(n <= input.len());
            assert!(!failed, "byte by byte failed where the whole input did not");
            assert_eq!((n, whole.is_done()), (taken, bytewise.is_done()), "fed whole and byte by byte");
            assert_eq!(decoded_whole, decoded_bytewise, "the same data decoded whole and byte by byte");
            assert!(decoded_whole.len() <= n, "the data is part of the body");
        }
        Err(_) => assert!(failed, "the whole input failed and byte by byte did not"),
    }
}

fn responses(input: &[u8], pick: u8) {
    let set = [("X-Frame-Options".into(), http::HeaderValue::from_static("DENY"))];
    let client = response::Client {
        head_request: pick & 0x10 != 0,
        close: pick & 0x20 != 0,
        set: if pick & 0x40 != 0 { &set } else { &[] },
        cookie: (pick & 0x80 != 0).then_some("S=1; Path=/"),
    };
    let mut out = Vec::new();
    if let Ok(Some(r)) = response::relay_head(input, &client, &mut out) {
        assert!(r.head_len <= input.len());
        assert!(out.ends_with(b"\r\n\r\n"));
        // every head the relay writes becomes an HTTP/2 response (an HTTP/2 client gets the same edits), without
        // connection-specific fields
        let (h2, len) = downstream::h2_head(&out).expect("the relayed head converts to HTTP/2");
        assert_eq!((len, h2.status.as_u16()), (out.len(), r.status));
        for name in ["connection", "transfer-encoding", "keep-alive", "upgrade", "proxy-connection"] {
            assert!(!h2.headers.contains_key(name), "{name} on an HTTP/2 response");
        }
    }
}
