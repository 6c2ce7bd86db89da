//! The differential test of the two transports: one corpus of requests, covering every policy kind, sent through an
//! ingress with the fast path and one without (Pingora's phases only), both reading the same objects. For every
//! request the bytes the pod received and the bytes the client received must be the same, after normalising only
//! what differs by construction: each ingress's own listening ports and generated request ids.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Requests as the pods received them: (pod name, raw head and body).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A pod speaking raw HTTP/1.1 that records every request and answers by path.
struct Pod {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pod {
    async fn start(name: &'static str, seen: Seen) -> Pod {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(serve(stream, name, seen.clone()));
            }
        });
        Pod { addr, task }
    }
}

async fn serve(mut s: TcpStream, name: &'static str, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let Some(RawRequest { raw, method, path, .. }) = read_raw_request(&mut s, &mut buf).await else { return };
        seen.lock().expect("lock").push((name.to_owned(), raw));
        let body = format!("{name} {method} {path}");
        let plain = |extra: &str| format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len());
        let reply = match path.as_str() {
            "/named" => plain("Server: gunicorn\r\n"),
            "/cookie" => plain("Set-Cookie: own=1; Path=/\r\n"),
            "/chunked" => format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            ),
            "/304" => "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_owned(),
            "/early" => format!("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n{}", plain("")),
            "/close" => {
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nX-Pod: {name}\r\n\r\n{body}").as_bytes()).await;
                return;
            }
            "/bad" => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                return;
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                return;
            }
            _ => plain(&format!("X-Pod: {name}\r\n")),
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request of the corpus.
struct Case {
    method: &'static str,
    host: &'static str,
    target: &'static str,
    headers: Vec<String>,
    body: &'static str,
}

fn get(host: &'static str, target: &'static str) -> Case {
    Case { method: "GET", host, target, headers: Vec::new(), body: "" }
}

fn with(mut c: Case, header: &str) -> Case {
    c.headers.push(header.to_owned());
    c
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut out =
            format!("{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: differential\r\n", self.method, self.target, self.host);
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        if !self.body.is_empty() {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        out.push_str(self.body);
        out.into_bytes()
    }
}

/// Reads one response (after any 1xx heads) to its end as framed, or to the close, within 10 s.
async fn read_response(s: &mut TcpStream, head_request: bool) -> String {
    let mut buf = Vec::new();
    let read = async {
        let mut start = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf[start..]) {
                let code = resp.code.unwrap_or(0);
                if (100..200).contains(&code) {
                    start += n;
                    continue;
                }
                let value = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let body = &buf[start + n..];
                let done = if head_request || code == 304 || code == 204 {
                    true
                } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                    body.ends_with(b"0\r\n\r\n")
                } else if let Some(len) = value("content-length") {
                    body.len() >= len.trim().parse::<usize>().unwrap_or(0)
                } else {
                    false // delimited by the close
                };
                if done {
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A chunked body as its payload: where a body is cut into chunks is not part of what it says (the fast path
/// passes the pod's chunks on as they came, Pingora's path re-chunks what it read).
fn dechunked(response: String) -> String {
    // the final head: after any 1xx heads
    let last = response.rfind("HTTP/1.1 ").unwrap_or(0);
    let Some(at) = response[last..].find("\r\n\r\n").map(|i| last + i) else { return response };
    let (head, mut rest) = (&response[..at + 4], &response[at + 4..]);
    if !head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked\r\n") || rest.is_empty() {
        return response;
    }
    let mut payload = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size, 16) else { return response };
        if n == 0 || after.len() < n + 2 {
            break;
        }
        payload.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    format!("{head}<chunked>{payload}")
}

/// What one request did through one ingress: what the client got and what the pods received.
async fn run(ingress: &Ingress, seen: &Seen, case: &Case) -> Trip {
    seen.lock().expect("lock").clear();
    let mut s = TcpStream::connect(ingress.http).await.expect("connect");
    s.write_all(&case.bytes()).await.expect("send");
    let response = dechunked(read_response(&mut s, case.method == "HEAD").await);
    drop(s);
    tokio::time::sleep(Duration::from_millis(20)).await; // a pod's record lands before the next request
    let received = std::mem::take(&mut *seen.lock().expect("lock"));
    let ports = [ingress.http.port(), ingress.https.port()];
    let normal = |text: &str| normalise(text, ports);
    (normal(&response), received.into_iter().map(|(pod, raw)| (pod, normal(&raw))).collect())
}

/// The ingress's own ports (in `X-Forwarded-Port` and HTTPS redirects), generated request ids and the time in
/// `Date` differ by construction; everything else must be the same byte for byte.
fn normalise(text: &str, [http, https]: [u16; 2]) -> String {
    text.split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("x-request-id: ") && line.len() == "x-request-id: ".len() + 32 {
                "X-Request-ID: <generated>".to_owned()
            } else if lower.starts_with("date: ") {
                "Date: <now>".to_owned()
            } else {
                line.replace(&format!(":{https}"), ":<https>").replace(&format!(": {http}"), ": <http>")
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The objects of the corpus: a route for every policy kind, on the pods `web` and `api`.
fn objects(web: &Pod, api: &Pod) -> String {
    let service = |name: &str, pod: Option<&Pod>| {
        let mut out = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n"
        );
        if let Some(p) = pod {
            out.push_str(&slice_yaml(name, 0, p.addr.port(), true));
        }
        out
    };
    const P: &str = "nginx.ingress.kubernetes.io";
    let one =
        |name: &str, ann: &str, host: &str, path: &str, svc: &str| ingress_yaml(name, ann, &[(host, path, svc)], "");
    [
        service("web", Some(web)),
        service("api", Some(api)),
        service("empty", None),
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: default}\ndata: {X-Route: edge, Server: edge-proxy}\n".to_owned(),
        one("plain", "", "plain.test", "/", "web"),
        one("allow-in", &format!("{P}/whitelist-source-range: 127.0.0.0/8"), "allow-in.test", "/", "web"),
        one("allow-out", &format!("{P}/whitelist-source-range: 10.0.0.0/8"), "allow-out.test", "/", "web"),
        one("bad-allow", &format!("{P}/whitelist-source-range: nonsense"), "bad-allow.test", "/", "web"),
        one("moved", &format!("{P}/permanent-redirect: https://new.example/"), "moved.test", "/", "web"),
        one("secure", &format!("{P}/force-ssl-redirect: \"true\""), "secure.test", "/", "web"),
        one("root", &format!("{P}/app-root: /app"), "root.test", "/", "web"),
        one("small", &format!("{P}/proxy-body-size: \"4\""), "small.test", "/", "web"),
        one("rps", &format!("{P}/limit-rps: \"1\""), "rps.test", "/", "web"),
        one("conns", &format!("{P}/limit-connections: \"1\""), "conns.test", "/", "web"),
        one("rewrite", &format!("{P}/rewrite-target: /$2"), "rewrite.test", "/api(/|$)(.*)", "web"),
        one("main", "", "canary.test", "/", "web"),
        one(
            "canary",
            &format!("{P}/canary: \"true\", {P}/canary-by-header: x-canary, {P}/canary-by-cookie: c"),
            "canary.test",
            "/",
            "api",
        ),
        one("heavy-main", "", "weight.test", "/", "web"),
        one("heavy", &format!("{P}/canary: \"true\", {P}/canary-weight: \"100\""), "weight.test", "/", "api"),
        one("sticky", &format!("{P}/affinity: cookie, {P}/session-cookie-name: S"), "sticky.test", "/", "web"),
        one("vhost", &format!("{P}/upstream-vhost: inner.local"), "vhost.test", "/", "web"),
        one("headers", &format!("{P}/custom-headers: default/hdrs"), "headers.test", "/", "web"),
        one("empty", "", "empty.test", "/", "empty"),
        one("slow", &format!("{P}/proxy-read-timeout: \"1\""), "slow.test", "/", "web"),
    ]
    .concat()
}

/// The `Cookie` header of a request pinned by the affinity cookie `response` set.
fn sticky_cookie(response: &str) -> String {
    let line = response.split("\r\n").find(|l| l.to_ascii_lowercase().starts_with("set-cookie: s=")).map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("an affinity cookie is set:\n{response}"));
    let value = line["set-cookie: ".len()..].split(';').next().expect("pair").to_owned();
    format!("Cookie: a=1; {value}")
}

/// The requests: every policy kind, and every kind of pod answer.
fn corpus(sticky_cookie: String) -> Vec<Case> {
    let mut corpus = vec![
        get("plain.test", "/"),
        with(with(get("plain.test", "/x?y=1"), "X-Forwarded-For: 6.6.6.6"), "X-Request-ID: abc"),
        with(get("plain.test", "/"), "Connection: keep-alive, close"),
        Case { method: "POST", body: "payload", ..with(get("plain.test", "/form"), "Content-Type: text/plain") },
        Case { method: "HEAD", ..get("plain.test", "/") },
        get("nope.test", "/"),
        Case { method: "HEAD", ..get("nope.test", "/") },
        get("allow-in.test", "/"),
        get("allow-out.test", "/"),
        get("bad-allow.test", "/"),
        get("moved.test", "/a"),
        get("secure.test", "/a?b=1"),
        get("root.test", "/"),
        get("root.test", "/x"),
        Case { method: "POST", body: "four", ..get("small.test", "/") },
        Case { method: "POST", body: "fives", ..get("small.test", "/") },
        get("conns.test", "/"),
        get("rewrite.test", "/api/users?x=1"),
        get("rewrite.test", "/api"),
        get("canary.test", "/"),
        with(get("canary.test", "/"), "X-Canary: always"),
        with(get("canary.test", "/"), "Cookie: c=always"),
        with(with(get("canary.test", "/"), "X-Canary: never"), "Cookie: c=always"),
        get("weight.test", "/"),
        get("sticky.test", "/"),
        Case { headers: vec![sticky_cookie], ..get("sticky.test", "/") },
        get("vhost.test", "/"),
        get("headers.test", "/"),
        get("headers.test", "/named"),
        get("empty.test", "/"),
        get("plain.test", "/named"),
        get("plain.test", "/cookie"),
        get("plain.test", "/chunked"),
        Case { method: "HEAD", ..get("plain.test", "/chunked") },
        get("plain.test", "/304"),
        get("plain.test", "/early"),
        get("plain.test", "/close"),
        get("plain.test", "/bad"),
        get("slow.test", "/slow"),
    ];
    // limit-rps 1: a burst of five, then 503s, on each ingress's own limiter
    corpus.extend((0..7).map(|_| get("rps.test", "/")));
    corpus
}

/// The pods `web` and `api` and two ingresses reading the same objects ([`objects`]): one with the fast path, one
/// without.
struct Pair {
    seen: Seen,
    fast: Ingress,
    slow: Ingress,
    _pods: [Pod; 2],
}

impl Pair {
    async fn start() -> Pair {
        let seen: Seen = Arc::default();
        let web = Pod::start("web", seen.clone()).await;
        let api = Pod::start("api", seen.clone()).await;
        let yaml = objects(&web, &api);
        let fast = Ingress::start(&yaml).await;
        let slow = Ingress::start_with(&yaml, false, |c| c.fast_path = false).await;
        Pair { seen, fast, slow, _pods: [web, api] }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_send_and_answer_the_same_bytes_for_every_policy_kind() {
    let Pair { seen, fast, slow, _pods } = Pair::start().await;
    let cookie = sticky_cookie(&run(&fast, &seen, &get("sticky.test", "/")).await.0);
    let corpus = corpus(cookie);
    let mut differ = Vec::new();
    let mut statuses = Vec::new();
    for case in &corpus {
        let (f, mut s) = (run(&fast, &seen, case).await, run(&slow, &seen, case).await);
        let status = f.0.split(' ').nth(1).unwrap_or("-").to_owned();
        // the one difference by construction: after a failure Pingora closes the client connection (its proxy
        // does not reuse a connection after an upstream error, nor one whose body it did not read), while the fast
        // path, which has read the whole request, keeps it as nginx does
        if ["413", "502", "504"].contains(&status.as_str()) {
            let (keep, close) = ("\r\nConnection: keep-alive\r\n", "\r\nConnection: close\r\n");
            assert!(f.0.contains(keep) && s.0.contains(close), "{status}:\n{}\n{}", f.0, s.0);
            s.0 = s.0.replace(close, keep);
        }
        statuses.push(status);
        differ.extend(difference(case, &f, &s));
    }
    conclude(&fast, &differ, corpus.len(), &statuses).await;
}

/// What one request did through one ingress: what the client got, and what the pods received.
type Trip = (String, Vec<(String, String)>);

/// How `case` went differently through the fast path (`f`) and Pingora's path (`s`), if it did.
fn difference(case: &Case, f: &Trip, s: &Trip) -> Option<String> {
    (f != s).then(|| {
        format!(
            "{} {}{}:\n  fast path client: {:?}\n  Pingora   client: {:?}\n  fast path pod:    {:?}\n  Pingora   pod:    {:?}",
            case.method, case.host, case.target, f.0, s.0, f.1, s.1
        )
    })
}

/// The checks after a corpus of `total` requests: none went differently, the fast path carried every one of them
/// itself, and the corpus reached every kind of answer (so a transport that answered everything alike wrongly would
/// show).
async fn conclude(fast: &Ingress, differ: &[String], total: usize, statuses: &[String]) {
    assert!(differ.is_empty(), "{} of {total} requests differ:\n{}", differ.len(), differ.join("\n"));
    let m = fast.metrics_text().await;
    assert!(!m.contains("skiff_ingress_fast_path_handovers_total{"), "the fast path handed requests over:\n{m}");
    for status in ["200", "301", "302", "304", "308", "403", "404", "413", "502", "503", "504"] {
        assert!(statuses.iter().any(|s| s == status), "no {status} in the corpus: {statuses:?}");
    }
}

/// One request of the corpus over HTTP/2 (h2c with prior knowledge, on a connection of its own): the response as
/// its status, fields (in order) and body.
async fn h2_exchange(addr: SocketAddr, case: &Case) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c handshake");
    tokio::spawn(conn);
    let uri = format!("http://{}{}", case.host, case.target);
    let mut req = Request::builder().method(case.method).uri(uri).header("user-agent", "differential");
    for h in &case.headers {
        let (name, value) = h.split_once(": ").expect("a header line");
        req = req.header(name, value);
    }
    let req = req.body(Full::new(Bytes::from_static(case.body.as_bytes()))).expect("request");
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return format!("no response: {e}"),
    };
    let mut out = format!("{}\r\n", resp.status().as_u16());
    for (name, value) in resp.headers() {
        out.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())));
    }
    out.push_str("\r\n");
    match resp.into_body().collect().await {
        Ok(body) => out.push_str(&String::from_utf8_lossy(&body.to_bytes())),
        Err(_) => out.push_str("<body cut short>"),
    }
    out
}

/// A head with its field names in lower case and its fields sorted by name (same-named ones kept in order). Over
/// HTTP/2 the two transports differ here by construction: Pingora's HTTP/2 session keeps no case for the fields it
/// adds and appends `Host` after the client's fields, where the fast path writes `Host` first (RFC 9112 §3.2)
/// and its fields as it does for HTTP/1.1; names are case-insensitive and the order of different names carries no
/// meaning (RFC 9110 §5.3).
fn fields_sorted(text: &str) -> String {
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return text.to_owned() };
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut fields: Vec<String> = lines
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect();
    fields.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    format!("{first}\r\n{}\r\n\r\n{body}", fields.join("\r\n"))
}

/// What one request over HTTP/2 did through one ingress: what the client got and what the pods received (fields
/// sorted, [`fields_sorted`]).
async fn run_h2(ingress: &Ingress, seen: &Seen, case: &Case) -> Trip {
    seen.lock().expect("lock").clear();
    let exchange = tokio::time::timeout(Duration::from_secs(10), h2_exchange(ingress.http, case));
    let response = exchange.await.unwrap_or_else(|_| "no response in 10 s".to_owned());
    tokio::time::sleep(Duration::from_millis(20)).await; // a pod's record lands before the next request
    let received = std::mem::take(&mut *seen.lock().expect("lock"));
    let ports = [ingress.http.port(), ingress.https.port()];
    let normal = |text: &str| fields_sorted(&normalise(text, ports));
    (normal(&response), received.into_iter().map(|(pod, raw)| (pod, normal(&raw))).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_send_and_answer_the_same_over_http2() {
    let Pair { seen, fast, slow, _pods } = Pair::start().await;
    let cookie = sticky_cookie(&run_h2(&fast, &seen, &get("sticky.test", "/")).await.0);
    // `Connection` is not a field HTTP/2 carries (RFC 9113 §8.2.2)
    let corpus: Vec<Case> = corpus(cookie)
        .into_iter()
        .filter(|c| !c.headers.iter().any(|h| h.to_ascii_lowercase().starts_with("connection:")))
        .collect();
    let mut differ = Vec::new();
    let mut statuses = Vec::new();
    for case in &corpus {
        let (f, s) = (run_h2(&fast, &seen, case).await, run_h2(&slow, &seen, case).await);
        statuses.push(f.0.split("\r\n").next().unwrap_or("-").to_owned());
        differ.extend(difference(case, &f, &s));
    }
    conclude(&fast, &differ, corpus.len(), &statuses).await;
}
