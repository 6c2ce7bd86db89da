//! `GET|POST /exec/{ns}/{pod}/{container}?command=…&stdin=&stdout=&stderr=&tty=`: `runc exec` behind a WebSocket
//! speaking `v5.channel.k8s.io` (and v4): binary messages whose first byte is the stream (0 stdin, 1 stdout,
//! 2 stderr, 3 status, 4 resize; v5's `[255, 0]` closes stdin), ending with a `metav1.Status` on channel 3 that
//! carries the exit code. With `tty=true` the command gets a terminal through runc's console socket.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::runtime::Runtime;

/// The exec request's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv.
    pub command: Vec<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
    /// Allocate a terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// From query pairs.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let o = Self::streams_from_query(pairs)?;
        if o.command.is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        Ok(o)
    }

    /// The streams an attach asks for (a command, if given, is ignored).
    pub fn streams_from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut o = ExecOptions::default();
        for (k, v) in pairs {
            let on = v == "true" || v == "1";
            match k.as_str() {
                "command" => o.command.push(v.clone()),
                "stdin" | "input" => o.stdin = on,
                "stdout" | "output" => o.stdout = on,
                "stderr" | "error" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        Ok(o)
    }
}

/// The final status message for an exit code.
pub fn status_message(code: i32) -> serde_json::Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
               "message": format!("command terminated with non-zero exit code: error executing command [exit code {code}]"),
               "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

/// A task sending the messages of the returned channel, then a normal close frame once the channel closes: kubectl's
/// WebSocket executor treats any other closure (even one without a code, 1005) as an error of the session.
pub(super) fn writer(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let normal = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    });
    (tx, task)
}

/// A channel message: the channel byte, then the data.
pub(super) fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Parses a resize message `{"Width":…,"Height":…}`.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let w = u16::try_from(v.get("Width")?.as_u64()?).ok()?;
    let h = u16::try_from(v.get("Height")?.as_u64()?).ok()?;
    Some((w, h))
}

async fn receive_master(listener: tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .map_err(|_| std::io::Error::other("runc did not send the terminal"))??;
    let std_stream = stream.into_std()?;
    std_stream.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || {
        crate::sys::recv_fd(&std_stream).map_err(|e| std::io::Error::other(format!("runc's terminal message: {e}")))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Runs the exec session on an upgraded socket.
pub async fn session(
    socket: WebSocket,
    runtime: Arc<dyn Runtime>,
    id: String,
    opts: ExecOptions,
    scratch: std::path::PathBuf,
    v5: bool,
) {
    let (sink, mut stream) = socket.split();
    let (out_tx, writer) = writer(sink);
    let code = run(&mut stream, &out_tx, runtime, &id, &opts, &scratch, v5).await;
    let status = match code {
        Ok(code) => status_message(code),
        Err(msg) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": msg}),
    };
    let _ = out_tx.send(frame(3, status.to_string().as_bytes())).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run(
    stream: &mut futures::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Message>,
    runtime: Arc<dyn Runtime>,
    id: &str,
    opts: &ExecOptions,
    scratch: &std::path::Path,
    v5: bool,
) -> Result<i32, String> {
    let null = std::process::Stdio::null;
    if opts.tty {
        std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
        let sock = scratch.join(format!("console-{:016x}.sock", rand::random::<u64>()));
        let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| format!("console socket: {e}"))?;
        let mut cmd = runtime.exec(id, &opts.command, Some(&sock));
        cmd.stdin(null()).stdout(null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("runc exec: {e}"))?;
        let master = match receive_master(listener).await {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&sock);
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err).await;
                }
                return Err(format!("{e}: {}", err.trim()));
            }
        };
        let _ = std::fs::remove_file(&sock);
        let file = std::fs::File::from(master);
        let resize_fd = file.try_clone().map_err(|e| e.to_string())?;
        let reader = tokio::fs::File::from_std(file.try_clone().map_err(|e| e.to_string())?);
        let mut writer = tokio::fs::File::from_std(file);
        let pumping = tokio::spawn(pump(reader, 1, out.clone()));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), pumping).await;
                    return Ok(status.map_err(|e| e.to_string())?.code().unwrap_or(255));
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                        0 => { let _ = writer.write_all(&b[1..]).await; let _ = writer.flush().await; }
                        4 => if let Some((w, h)) = parse_resize(&b[1..]) { let _ = crate::sys::set_winsize(&resize_fd, h, w); },
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = child.start_kill(); }
                    _ => {}
                }
            }
        }
    }
    let mut cmd = runtime.exec(id, &opts.command, None);
    cmd.stdin(if opts.stdin { std::process::Stdio::piped() } else { null() })
        .stdout(if opts.stdout { std::process::Stdio::piped() } else { null() })
        .stderr(if opts.stderr { std::process::Stdio::piped() } else { null() })
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("runc exec: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut pumps = Vec::new();
    if let Some(o) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(o, 1, out.clone())));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(e, 2, out.clone())));
    }
    let mut client_open = true;
    loop {
        tokio::select! {
            status = child.wait() => {
                for p in pumps {
                    let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
                }
                return Ok(status.map_err(|e| e.to_string())?.code().unwrap_or(255));
            }
            msg = stream.next(), if client_open => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    match (b[0], b.get(1)) {
                        (0, _) => {
                            if let Some(s) = stdin.as_mut()
                                && s.write_all(&b[1..]).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        (255, Some(0)) if v5 => { stdin = None; }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { client_open = false; stdin = None; }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_collect_repeated_commands() {
        let q: Vec<(String, String)> =
            [("command", "sh"), ("command", "-c"), ("command", "exit 3"), ("stdout", "true"), ("stdin", "1")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        let o = ExecOptions::from_query(&q).expect("ok");
        assert_eq!(o.command, vec!["sh", "-c", "exit 3"]);
        assert!(o.stdin && o.stdout && !o.stderr && !o.tty);
        assert!(ExecOptions::from_query(&[("stdout".into(), "true".into())]).is_err());
    }

    #[test]
    fn a_non_zero_exit_is_reported_as_kubectl_expects() {
        let s = status_message(2);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "2");
        assert_eq!(status_message(0)["status"], "Success");
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
    }
}
