//! Handing a connection to Pingora with the bytes the fast path already read put back in front of it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::ALPN;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::request::request_end;

/// A connection whose first bytes come from a buffer, then from the socket. Everything else (writes, TLS and
/// socket facts) is the inner connection's.
///
/// When the buffer starts with a whole request and more bytes follow it (requests pipelined behind it), reads end
/// at that request (the fence) and then wait: Pingora's proxy serves that one request with nothing read beyond
/// it (its idle read of the client waits too) and hands the connection back for reuse, and the fast path, which
/// unwraps this `Replay` again ([`Replay::new`]), answers the requests behind it. Without such bytes reads go on
/// to the socket, as Pingora reads any connection.
#[derive(Debug)]
pub struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    /// Where the first request ends, when pipelined bytes follow it.
    fence: Option<usize>,
    inner: Stream,
}

impl Replay {
    /// `inner` with `prefix` to be read again first. A connection that is itself a `Replay` (handed back by
    /// Pingora and handed over again) is unwrapped: its unread bytes follow `prefix`, so wrappers never nest.
    pub fn new(inner: Stream, mut prefix: Vec<u8>) -> Self {
        let inner = if inner.as_any().is::<Replay>() {
            let old = inner.into_any().downcast::<Replay>().expect("the type was just checked");
            prefix.extend_from_slice(old.buffered());
            old.inner
        } else {
            inner
        };
        let fence = request_end(&prefix).filter(|end| *end < prefix.len());
        Replay { prefix, pos: 0, fence, inner }
    }

    /// A connection Pingora handed back, for the fast path: a `Replay` is unwrapped into its connection, behind
    /// its unread bytes without a fence (or bare, when none are left).
    pub fn resume(stream: Stream) -> Stream {
        if !stream.as_any().is::<Replay>() {
            return stream;
        }
        let old = stream.into_any().downcast::<Replay>().expect("the type was just checked");
        if old.buffered().is_empty() {
            return old.inner;
        }
        let prefix = old.buffered().to_vec();
        Box::new(Replay { prefix, pos: 0, fence: None, inner: old.inner })
    }

    fn buffered(&self) -> &[u8] {
        &self.prefix[self.pos..]
    }

    /// The bytes the next read may return from the buffer.
    fn readable(&self) -> &[u8] {
        let end = self.fence.unwrap_or(self.prefix.len());
        &self.prefix[self.pos.min(end)..end]
    }

    /// Reads have reached the fence with pipelined bytes behind it: they wait for the fast path.
    fn fenced(&self) -> bool {
        self.fence == Some(self.pos)
    }
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = this.readable();
        if !left.is_empty() {
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.fenced() {
            // nothing wakes this read: the request before the fence is complete, so only Pingora's idle check of
            // the client waits here, beside the upstream it is waiting for
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
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

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Replay {
    /// Fills `buf` from the replayed bytes, reading more from the socket into them when needed (Pingora peeks for
    /// the h2c preface this way), without consuming anything.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.pos > 0 {
            self.prefix.drain(..self.pos);
            self.fence = self.fence.map(|f| f - self.pos);
            self.pos = 0;
        }
        while self.prefix.len() < buf.len() {
            let mut more = vec![0u8; buf.len() - self.prefix.len()];
            let n = self.inner.read(&mut more).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed while peeking"));
            }
            self.prefix.extend_from_slice(&more[..n]);
        }
        buf.copy_from_slice(&self.prefix[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn replayed_bytes_come_first_and_peeking_consumes_nothing() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Replay::new(Box::new(a), b"PRI * HTTP/2".to_vec());
        b.write_all(b".0\r\n\r\nSM\r\n\r\nrest").await.expect("write");
        let mut preface = [0u8; 24];
        assert!(r.try_peek(&mut preface).await.expect("peek"));
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        drop(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest");
    }

    #[tokio::test]
    async fn a_whole_first_request_is_read_alone_and_nested_replays_flatten() {
        let (a, b) = tokio::io::duplex(64);
        let first = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        let mut bytes = first.to_vec();
        bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\nGET /third");
        let mut r = Replay::new(Box::new(a), bytes);
        let mut buf = [0u8; 256];
        let n = r.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], first, "the first read ends with the first request");
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut buf)).await;
        assert!(waiting.is_err(), "reads wait at the fence");
        // handed back to the fast path, which reads some and hands it over again: one wrapper
        let mut back = Replay::resume(Box::new(r));
        let n = back.read(&mut buf[..5]).await.expect("read");
        assert_eq!(&buf[..n], b"GET /");
        let mut again = Replay::new(back, b"GET /".to_vec());
        assert!(!format!("{:?}", again.inner).contains("Replay"), "not nested: {:?}", again.inner);
        let n = again.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", "fenced again at the next request");
        // back to the fast path: nothing held at a fence
        let mut last = Replay::resume(Box::new(again));
        let n = last.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET /third");
        // with every replayed byte read, no wrapper is left
        let bare = Replay::resume(last);
        assert!(!format!("{bare:?}").contains("Replay"), "{bare:?}");
        drop(b);
    }

    #[tokio::test]
    async fn writes_go_to_the_connection() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Replay::new(Box::new(a), b"GET".to_vec());
        r.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.expect("write");
        r.flush().await.expect("flush");
        let mut got = [0u8; 28];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    }
}
