//! The attach socket: how `kubectl attach` (and `kubectl run -i`) reaches a container's main process.
//!
//! The shim that holds a container's stdio listens on `attach.sock` in the bundle directory. Each connection gets
//! the container's output from the moment it attaches and may write to its stdin, in frames of
//! `[kind: u8][length: u32 big-endian][payload]`:
//!
//! | kind | direction | meaning |
//! |---|---|---|
//! | 1, 2 | shim → client | stdout, stderr (a terminal's output is all stdout) |
//! | 0 | client → shim | bytes for the container's stdin |
//! | 4 | client → shim | terminal resize, `{"Width":…,"Height":…}` |
//! | 254 | client → shim | this session attaches stdin (with `stdinOnce`, its end closes the container's stdin) |
//! | 255 | client → shim | this session closes its stdin |
//!
//! The shim closes every connection when the container ends. Bundle paths can be longer than a socket address
//! allows (108 bytes), so both ends reach the socket through a descriptor of the bundle directory:
//! `/proc/<pid>/fd/<fd>/attach.sock`.

use std::path::{Path, PathBuf};

/// Frame kinds.
pub mod kind {
    /// Client → shim: stdin bytes.
    pub const STDIN: u8 = 0;
    /// Shim → client: stdout bytes.
    pub const STDOUT: u8 = 1;
    /// Shim → client: stderr bytes.
    pub const STDERR: u8 = 2;
    /// Client → shim: terminal size.
    pub const RESIZE: u8 = 4;
    /// Client → shim: this session uses stdin.
    pub const ATTACH_STDIN: u8 = 254;
    /// Client → shim: this session's stdin ended.
    pub const CLOSE_STDIN: u8 = 255;
}

/// Largest payload accepted in one frame.
pub const MAX_FRAME: usize = 1 << 20;

/// The socket's file name in the bundle directory.
pub const SOCKET: &str = "attach.sock";

/// One frame's bytes.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Takes the frames complete at the front of `buf` (leaving a partial one there); a frame larger than
/// [`MAX_FRAME`] is an error (the connection is then dropped).
pub fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 5 {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("an attach frame of {len} bytes is larger than {MAX_FRAME}"));
        }
        if buf.len() < at + 5 + len {
            break;
        }
        out.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// The socket's path as reachable through descriptor `dir_fd` (of the bundle directory) of process `pid`.
pub fn path_via_fd(pid: u32, dir_fd: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/fd/{dir_fd}/{SOCKET}"))
}

/// Connects to the attach socket of the container whose bundle is `bundle`.
pub async fn connect(bundle: &Path) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(bundle)?;
    let path = path_via_fd(std::process::id(), dir.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&path).await;
    drop(dir);
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_and_partial_ones_wait() {
        let mut buf =
            [frame(kind::STDOUT, b"hello"), frame(kind::CLOSE_STDIN, b""), frame(kind::STDERR, b"x")].concat();
        let last = buf.pop().expect("a byte");
        let got = take_frames(&mut buf).expect("valid");
        assert_eq!(got, vec![(kind::STDOUT, b"hello".to_vec()), (kind::CLOSE_STDIN, vec![])]);
        assert_eq!(buf.len(), 5, "the partial frame stays");
        buf.push(last);
        assert_eq!(take_frames(&mut buf).expect("valid"), vec![(kind::STDERR, b"x".to_vec())]);
        assert!(buf.is_empty());
        let mut huge = vec![kind::STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(take_frames(&mut huge).is_err());
    }
}
