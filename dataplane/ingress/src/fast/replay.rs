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

/// A connection whose first bytes come from a buffer, then from the socket. Everything else (writes, TLS and
/// socket facts) is the inner connection's.
#[derive(Debug)]
pub struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: Stream,
}

impl Replay {
    /// `inner` with `prefix` to be read again first.
    pub fn new(inner: Stream, prefix: Vec<u8>) -> Self {
        Replay { prefix, pos: 0, inner }
    }

    fn buffered(&self) -> &[u8] {
        &self.prefix[self.pos..]
    }
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = this.buffered();
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
