//! A connection that must start talking in time: the first read after the TLS handshake has a deadline, so a
//! client that opens a connection and sends nothing (or half an HTTP/2 preface) is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S` with a deadline on its first bytes.
#[derive(Debug)]
pub struct FirstReadDeadline<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstReadDeadline<S> {
    /// Wraps `inner`; its first bytes must arrive within `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        FirstReadDeadline { inner, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstReadDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstReadDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn silence_is_cut_and_talk_is_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = FirstReadDeadline::new(server, Duration::from_millis(200));
        let mut buf = [0u8; 8];
        let e = s.read(&mut buf).await.expect_err("nothing was sent");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut s = FirstReadDeadline::new(server, Duration::from_millis(200));
        client.write_all(b"GET").await.expect("write");
        assert_eq!(s.read(&mut buf).await.expect("read"), 3);
        // after the first bytes, silence is the protocol's business (keep-alive, watches)
        let pending = tokio::time::timeout(Duration::from_millis(600), s.read(&mut buf)).await;
        assert!(pending.is_err(), "no deadline after the first bytes");
    }
}
