//! `GET|POST /attach/{ns}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`: a WebSocket session (`v5.channel.k8s.io`
//! or v4, as exec) joined to the container's attach socket, which its shim serves ([`crate::runtime::attach`]).
//!
//! The session sees the container's output from the moment it attaches, writes to its stdin if it asked for stdin
//! and the container has one, and forwards terminal resizes. It ends with a `Success` status when the container
//! ends, or when the client goes away (the container goes on; with `stdinOnce` its stdin is then closed).

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::exec::{ExecOptions, frame, writer};
use crate::runtime::attach::{self as sock, kind};

/// Runs one attach session on an upgraded WebSocket.
pub async fn session(socket: WebSocket, bundle: PathBuf, opts: ExecOptions, v5: bool) {
    let (sink, mut ws) = socket.split();
    let (out, writer) = writer(sink);
    let status = match run(&mut ws, &out, &bundle, &opts, v5).await {
        Ok(()) => json!({"metadata": {}, "status": "Success"}),
        Err(msg) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": msg}),
    };
    let _ = out.send(frame(3, status.to_string().as_bytes())).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

async fn run(
    ws: &mut futures::stream::SplitStream<WebSocket>,
    out: &tokio::sync::mpsc::Sender<Message>,
    bundle: &std::path::Path,
    opts: &ExecOptions,
    v5: bool,
) -> Result<(), String> {
    let conn = sock::connect(bundle).await.map_err(|e| format!("attaching to the container: {e}"))?;
    let (mut rd, mut wr) = conn.into_split();
    if opts.stdin {
        wr.write_all(&sock::frame(kind::ATTACH_STDIN, b"")).await.map_err(|e| e.to_string())?;
    }
    // Input goes through its own task: a container that does not read its stdin must not keep this session from
    // seeing the client leave.
    let (input, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = queued.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let result = pump(ws, out, &mut rd, &input, opts, v5).await;
    drop(input);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), writer).await.is_err() {
        abort.abort();
    }
    result
}

/// How long input may wait for the container to take it before the session gives up.
const INPUT_WAIT: Duration = Duration::from_secs(30);

async fn pump(
    ws: &mut futures::stream::SplitStream<WebSocket>,
    out: &tokio::sync::mpsc::Sender<Message>,
    rd: &mut tokio::net::unix::OwnedReadHalf,
    input: &tokio::sync::mpsc::Sender<Vec<u8>>,
    opts: &ExecOptions,
    v5: bool,
) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    // a session in which nothing moved either way for kubelet's streaming idle timeout ends
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(last + super::portforward::IDLE_TIMEOUT) => return Ok(()),
            n = rd.read(&mut chunk) => {
                last = tokio::time::Instant::now();
                let n = match n {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                for (k, data) in sock::take_frames(&mut buf)? {
                    let wanted = (k == kind::STDOUT && opts.stdout) || (k == kind::STDERR && opts.stderr);
                    if wanted && out.send(frame(k, &data)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            msg = ws.next() => {
                last = tokio::time::Instant::now();
                let forward = match msg {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => match (b[0], b.get(1)) {
                        (0, _) if opts.stdin => Some(sock::frame(kind::STDIN, &b[1..])),
                        (4, _) => Some(sock::frame(kind::RESIZE, &b[1..])),
                        (255, Some(0)) if v5 && opts.stdin => Some(sock::frame(kind::CLOSE_STDIN, b"")),
                        _ => None,
                    },
                    // The client left: the session ends (closing its stdin), the container goes on.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    _ => None,
                };
                if let Some(f) = forward {
                    match tokio::time::timeout(INPUT_WAIT, input.send(f)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ok(()),
                        Err(_) => return Err("the container has not taken its input for 30 s".into()),
                    }
                }
            }
        }
    }
}
