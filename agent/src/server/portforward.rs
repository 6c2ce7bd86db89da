//! `GET|POST /portForward/{ns}/{pod}`: `kubectl port-forward`'s streams to a pod's ports.
//!
//! The client opens, per local connection, two SPDY streams with the headers `streamtype` (`error` or `data`),
//! `port` and `requestid`. The agent answers each, connects to `localhost:<port>` inside the pod's network namespace
//! (so a server bound to 127.0.0.1 in the pod is reachable, as with kubelet), and copies bytes both ways on the data
//! stream; a failed connection is reported as text on the error stream. SPDY travels either raw on the upgraded
//! connection (`Upgrade: SPDY/3.1`, kubectl up to 1.30 and the fallback of later ones) or inside WebSocket binary
//! messages (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+), which [`websocket_bytes`] turns back into a byte stream.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::spdy::{FLAG_FIN, Frame, HeaderCodec, RST_CANCEL, RST_INVALID_STREAM, RST_PROTOCOL_ERROR};

/// The subprotocol of SPDY tunnelled in WebSocket messages.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The `X-Stream-Protocol-Version` of raw SPDY port forwarding.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// Largest data frame sent (what kubelet's SPDY streams use).
const CHUNK: usize = 32 * 1024;

/// How long a connection to the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A session in which no byte moved either way for this long is closed (kubelet's default
/// `--streaming-connection-idle-timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Forwarded connections one session may hold at once (each is a pair of streams).
const MAX_FORWARDS: usize = 64;

/// Data frames queued towards one pod connection before the stream is reset: kubectl does not honour SPDY's
/// flow control, so a pod that stops reading must not stall the session's other streams.
const QUEUED_FRAMES: usize = 64;

/// RST_STREAM status: too many streams.
const RST_REFUSED: u32 = 3;

/// RST_STREAM status: a stream sent more than was taken.
const RST_FLOW_CONTROL: u32 = 7;

/// Where the forwarded connections go: the pod's network namespace, or the node's for a `hostNetwork` pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `namespace/name`, for error messages.
    pub pod: String,
    /// The pod's uid, for error messages (kubelet prints it).
    pub uid: String,
    /// The bound network namespace; `None` is the node's own.
    pub netns: Option<PathBuf>,
}

impl Target {
    /// Connects to `localhost:port` where the pod listens: IPv4 first, then IPv6 (as containerd does).
    pub async fn dial(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let connect = move || -> std::io::Result<std::net::TcpStream> {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            let s = std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT)
                .or_else(|e| std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let netns = self.netns.clone();
        let std = tokio::task::spawn_blocking(move || match netns {
            // The socket is made on a thread inside the namespace and keeps that namespace after the thread ends.
            Some(ns) => crate::network::netns::run_in(&ns, connect),
            None => connect(),
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::net::TcpStream::from_std(std)
    }
}

/// What a SYN_STREAM asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    /// `error` or `data`.
    pub kind: StreamKind,
    /// The pod port.
    pub port: u16,
    /// Pairs the error and data streams of one local connection.
    pub request_id: String,
}

/// A port-forward stream's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Carries an error message back.
    Error,
    /// Carries the connection's bytes.
    Data,
}

impl StreamRequest {
    /// Reads a stream's headers, with kubelet's messages for bad ones.
    pub fn from_headers(headers: &[(String, String)]) -> Result<Self, String> {
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let kind = match get("streamtype") {
            Some("error") => StreamKind::Error,
            Some("data") => StreamKind::Data,
            Some(other) => return Err(format!("invalid stream type {other:?}")),
            None => return Err("streamtype header is missing".into()),
        };
        let port = get("port").ok_or("port header is missing")?;
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("invalid port header {port:?}")),
        };
        // kubectl before requestid existed sent one pair at a time; pair them by port then.
        let request_id = get("requestid").map_or_else(|| format!("port-{port}"), str::to_string);
        Ok(StreamRequest { kind, port, request_id })
    }
}

/// One forwarded connection while it lasts.
struct Forward {
    to_pod: mpsc::Sender<Option<Vec<u8>>>,
    task: JoinHandle<()>,
}

/// Runs a port-forward session on `io` until the client goes away, or nothing moved for `idle`
/// ([`IDLE_TIMEOUT`] in service).
pub async fn session<S>(io: S, target: Target, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    // the last time bytes moved either way (milliseconds since the session began)
    let began = tokio::time::Instant::now();
    let check = (idle / 4).min(Duration::from_secs(60));
    let last_active = Arc::new(AtomicU64::new(0));
    let active = last_active.clone();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            active.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        let _ = wr.shutdown().await;
    });
    let mut codec = HeaderCodec::default();
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    let mut forwards: HashMap<u32, Forward> = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    'read: loop {
        forwards.retain(|_, f| !f.task.is_finished());
        let n = match tokio::time::timeout(check, rd.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                let quiet = (began.elapsed().as_millis() as u64).saturating_sub(last_active.load(Ordering::Relaxed));
                if quiet >= idle.as_millis() as u64 {
                    tracing::debug!(pod = %target.pod, quiet_ms = quiet, "port-forward: idle, closing");
                    break;
                }
                continue;
            }
        };
        last_active.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            let (frame, used) = match Frame::parse(&buf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, pod = %target.pod, "port-forward: bad SPDY frame");
                    let _ = out_tx.send(Frame::GoAway { last_stream: 0 }.encode()).await;
                    break 'read;
                }
            };
            at += used;
            let send = |f: Frame| {
                let tx = out_tx.clone();
                async move { tx.send(f.encode()).await.is_ok() }
            };
            match frame {
                Frame::SynStream { stream, block, .. } => {
                    let headers = match codec.decode(&block) {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::debug!(error = %e, pod = %target.pod, "port-forward: unreadable headers");
                            let _ = send(Frame::GoAway { last_stream: stream }).await;
                            break 'read;
                        }
                    };
                    let req = match StreamRequest::from_headers(&headers) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, pod = %target.pod, "port-forward: refused a stream");
                            let _ = send(Frame::RstStream { stream, status: RST_PROTOCOL_ERROR }).await;
                            continue;
                        }
                    };
                    let reply = Frame::SynReply { stream, flags: 0, block: codec.encode(&[]) };
                    if !send(reply).await {
                        break 'read;
                    }
                    if forwards.contains_key(&stream) || error_streams.values().any(|s| *s == stream) {
                        tracing::debug!(stream, pod = %target.pod, "port-forward: a stream id was used twice");
                        let _ = send(Frame::GoAway { last_stream: stream }).await;
                        break 'read;
                    }
                    if forwards.len() >= MAX_FORWARDS || error_streams.len() >= MAX_FORWARDS {
                        let _ = send(Frame::RstStream { stream, status: RST_REFUSED }).await;
                        continue;
                    }
                    match req.kind {
                        StreamKind::Error => {
                            error_streams.insert(req.request_id, stream);
                        }
                        StreamKind::Data => {
                            let error_stream = error_streams.remove(&req.request_id);
                            let (to_pod, from_client) = mpsc::channel(QUEUED_FRAMES);
                            let task = tokio::spawn(forward(
                                target.clone(),
                                req.port,
                                stream,
                                error_stream,
                                from_client,
                                out_tx.clone(),
                            ));
                            forwards.insert(stream, Forward { to_pod, task });
                        }
                    }
                }
                Frame::Data { stream, flags, data } => {
                    if let Some(f) = forwards.get(&stream) {
                        let fin = flags & FLAG_FIN != 0;
                        let ok = (data.is_empty() || f.to_pod.try_send(Some(data)).is_ok())
                            && (!fin || f.to_pod.try_send(None).is_ok());
                        if !ok {
                            // the pod does not keep up (or its connection ended): reset this stream only
                            if let Some(f) = forwards.remove(&stream) {
                                f.task.abort();
                            }
                            let _ = send(Frame::RstStream { stream, status: RST_FLOW_CONTROL }).await;
                        }
                    } else if !error_streams.values().any(|s| *s == stream) && !data.is_empty() {
                        // Data on a stream that was never opened or is already gone (the error streams' empty FIN
                        // is expected and ignored).
                        let _ = send(Frame::RstStream { stream, status: RST_INVALID_STREAM }).await;
                    }
                }
                Frame::RstStream { stream, .. } => {
                    if let Some(f) = forwards.remove(&stream) {
                        f.task.abort();
                    }
                    error_streams.retain(|_, s| *s != stream);
                }
                Frame::Ping(id) => {
                    let _ = send(Frame::Ping(id)).await;
                }
                Frame::GoAway { .. } => break 'read,
                Frame::SynReply { .. } | Frame::Ignored(_) => {}
            }
        }
        buf.drain(..at);
    }
    for (_, f) in forwards.drain() {
        f.task.abort();
    }
    drop(out_tx);
    let writer_abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
        writer_abort.abort();
    }
}

/// One local connection: dial the pod, then copy both ways; a failed dial is reported on the error stream.
async fn forward(
    target: Target,
    port: u16,
    stream: u32,
    error_stream: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let fin = |s: u32| Frame::Data { stream: s, flags: FLAG_FIN, data: Vec::new() }.encode();
    let tcp = match target.dial(port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {}, uid {}: {e}", target.pod, target.uid);
            tracing::debug!(pod = %target.pod, port, error = %e, "port-forward: connecting to the pod failed");
            if let Some(es) = error_stream {
                let _ = out.send(Frame::Data { stream: es, flags: FLAG_FIN, data: msg.into_bytes() }.encode()).await;
            }
            let _ = out.send(Frame::RstStream { stream, status: RST_CANCEL }.encode()).await;
            return;
        }
    };
    let (mut pod_rd, mut pod_wr) = tcp.into_split();
    let to_client = {
        let out = out.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match pod_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let f = Frame::Data { stream, flags: 0, data: buf[..n].to_vec() };
                        if out.send(f.encode()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = out.send(fin(stream)).await;
        }
    };
    let to_pod = async move {
        while let Some(Some(data)) = from_client.recv().await {
            if pod_wr.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = pod_wr.shutdown().await;
    };
    tokio::join!(to_client, to_pod);
    if let Some(es) = error_stream {
        let _ = out.send(fin(es)).await;
    }
}

/// Turns a WebSocket carrying raw bytes in binary messages into a byte stream (the other end of the returned
/// duplex); pumping stops when either side closes.
pub fn websocket_bytes(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(ours);
    tokio::spawn(async move {
        let inbound = async {
            while let Some(Ok(m)) = ws_rx.next().await {
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if ws_tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let normal =
                axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
            let _ = ws_tx.send(Message::Close(Some(normal))).await;
        };
        // Either side ending ends the session: the client closing its WebSocket, or the session finishing.
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    });
    theirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn stream_headers_are_read_as_kubelet_reads_them() {
        let r = StreamRequest::from_headers(&h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "3")]));
        assert_eq!(r, Ok(StreamRequest { kind: StreamKind::Data, port: 8080, request_id: "3".into() }));
        let old = StreamRequest::from_headers(&h(&[("streamtype", "error"), ("port", "80")])).expect("no requestid");
        assert_eq!(old.request_id, "port-80");
        for bad in [
            h(&[("port", "80")]),
            h(&[("streamtype", "video"), ("port", "80")]),
            h(&[("streamtype", "data"), ("port", "0")]),
            h(&[("streamtype", "data"), ("port", "70000")]),
            h(&[("streamtype", "data")]),
        ] {
            assert!(StreamRequest::from_headers(&bad).is_err(), "{bad:?}");
        }
    }

    /// A client speaking SPDY through a duplex pipe to a session whose "pod" is this process's loopback.
    #[tokio::test]
    async fn a_session_forwards_bytes_and_reports_refused_ports() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept");
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.expect("read");
            s.write_all(&[b"echo:".as_slice(), &b].concat()).await.expect("write");
        });
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let target = Target { pod: "default/p".into(), uid: "u1".into(), netns: None };
        tokio::spawn(session(server, target, IDLE_TIMEOUT));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut codec = HeaderCodec::default();
        let syn = |codec: &mut HeaderCodec, stream: u32, kind: &str, port: u16, id: &str| {
            let p = port.to_string();
            Frame::SynStream {
                stream,
                flags: 0,
                block: codec.encode(&[("streamtype", kind), ("port", &p), ("requestid", id)]),
            }
            .encode()
        };
        let mut out = syn(&mut codec, 1, "error", port, "0");
        out.extend(syn(&mut codec, 3, "data", port, "0"));
        out.extend(Frame::Data { stream: 3, flags: 0, data: b"hello".to_vec() }.encode());
        out.extend(syn(&mut codec, 5, "error", closed, "1"));
        out.extend(syn(&mut codec, 7, "data", closed, "1"));
        out.extend(Frame::Ping(42).encode());
        // Split into tiny writes, as kubectl's WebSocket tunnel does.
        for piece in out.chunks(3) {
            wr.write_all(piece).await.expect("write");
        }
        let mut got: Vec<Frame> = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let want = |got: &[Frame]| {
            let echoed: Vec<u8> = got
                .iter()
                .filter_map(|f| match f {
                    Frame::Data { stream: 3, data, .. } => Some(data.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .concat();
            echoed == b"echo:hello"
                && got.iter().any(|f| matches!(f, Frame::Data { stream: 5, data, .. } if !data.is_empty()))
                && got.contains(&Frame::Ping(42))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !want(&got) {
            let n =
                tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await.expect("answers in time").expect("read");
            assert!(n > 0, "the session ended early: {got:?}");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((f, used)) = Frame::parse(&buf).expect("valid frames") {
                buf.drain(..used);
                got.push(f);
            }
        }
        let replies: Vec<u32> = got
            .iter()
            .filter_map(|f| if let Frame::SynReply { stream, .. } = f { Some(*stream) } else { None })
            .collect();
        assert_eq!(replies, vec![1, 3, 5, 7], "every stream is answered, in order");
        let error_text = got
            .iter()
            .find_map(|f| match f {
                Frame::Data { stream: 5, data, .. } if !data.is_empty() => {
                    Some(String::from_utf8_lossy(data).into_owned())
                }
                _ => None,
            })
            .expect("an error message");
        assert!(error_text.contains(&format!("error forwarding port {closed} to pod default/p")), "{error_text}");
        // The SYN_REPLY header blocks inflate in one context, as the client's would.
        let mut theirs = HeaderCodec::default();
        for f in &got {
            if let Frame::SynReply { block, .. } = f {
                assert_eq!(theirs.decode(block).expect("inflates"), vec![]);
            }
        }
    }

    #[tokio::test]
    async fn a_session_where_nothing_moves_is_closed() {
        let (client, server) = tokio::io::duplex(1024);
        let target = Target { pod: "default/p".into(), uid: "u".into(), netns: None };
        let idle = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let ended = tokio::spawn(session(server, target, idle));
        let (mut rd, _wr) = tokio::io::split(client);
        let mut b = [0u8; 16];
        let n =
            tokio::time::timeout(Duration::from_secs(5), rd.read(&mut b)).await.expect("closed in time").expect("read");
        assert_eq!(n, 0, "the session closed its side");
        assert!(started.elapsed() >= idle);
        ended.await.expect("session ended");
    }
}
