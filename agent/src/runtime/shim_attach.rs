//! The shim's side of the attach socket ([`super::attach`]): the listener, the attached sessions and the
//! container's stdin, driven by the shim's `poll(2)` loop without threads or a runtime.
//!
//! Output is fanned out to every session as it is read; a session that falls more than [`MAX_BACKLOG`] behind is
//! dropped rather than allowed to stall the container's output or its log. Stdin bytes wait in a bounded buffer
//! until the container reads them; while it is full, sessions are not read.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::poll::PollFlags;

use super::attach::{frame, kind, take_frames};

/// Output a session may have unread before it is dropped.
pub const MAX_BACKLOG: usize = 4 << 20;

/// Stdin bytes buffered before sessions stop being read.
const MAX_STDIN: usize = 1 << 20;

/// Sessions attached at once; more are closed as they come.
pub const MAX_SESSIONS: usize = 16;

/// One attached session.
struct Session {
    sock: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    uses_stdin: bool,
    gone: bool,
}

/// The container's stdin (a pipe, or the terminal).
struct Stdin {
    file: File,
    pending: Vec<u8>,
    close_when_flushed: bool,
}

/// Everything attach-related the shim holds.
pub struct Attach {
    listener: UnixListener,
    sessions: Vec<Session>,
    stdin: Option<Stdin>,
    stdin_once: bool,
    terminal: Option<File>,
}

/// What [`Attach::poll_set`] asked for, to route the results back.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Stdin,
    Session(usize),
}

impl Attach {
    /// Serves on `listener` (non-blocking); `stdin` is the container's stdin (non-blocking) if it has one,
    /// `terminal` its terminal (for resizes).
    pub fn new(listener: UnixListener, stdin: Option<File>, stdin_once: bool, terminal: Option<File>) -> Self {
        Attach {
            listener,
            sessions: Vec::new(),
            stdin: stdin.map(|file| Stdin { file, pending: Vec::new(), close_when_flushed: false }),
            stdin_once,
            terminal,
        }
    }

    /// The descriptors to poll and for what, in an order [`Attach::handle`] understands.
    pub fn poll_set(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.slots().into_iter().map(|(fd, flags, _)| (fd, flags)).collect()
    }

    fn slots(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Slot)> {
        let mut v = vec![(self.listener.as_fd(), PollFlags::POLLIN, Slot::Listener)];
        let stdin_room = self.stdin.as_ref().is_some_and(|s| s.pending.len() < MAX_STDIN);
        if let Some(s) = &self.stdin
            && !s.pending.is_empty()
        {
            v.push((s.file.as_fd(), PollFlags::POLLOUT, Slot::Stdin));
        }
        for (i, s) in self.sessions.iter().enumerate() {
            let mut flags = PollFlags::empty();
            if stdin_room || self.stdin.is_none() {
                flags |= PollFlags::POLLIN;
            }
            if !s.output.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            v.push((s.sock.as_fd(), flags, Slot::Session(i)));
        }
        v
    }

    /// Acts on the events of a poll of [`Attach::poll_set`] (`revents` in the same order).
    pub fn handle(&mut self, revents: &[PollFlags]) {
        let slots: Vec<Slot> = self.slots().into_iter().map(|(_, _, s)| s).collect();
        for (slot, ev) in slots.into_iter().zip(revents.iter().copied()) {
            if ev.is_empty() {
                continue;
            }
            match slot {
                Slot::Listener => self.accept(),
                Slot::Stdin => self.flush_stdin(),
                Slot::Session(i) => {
                    if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                        self.read_session(i);
                    }
                    if ev.contains(PollFlags::POLLOUT) {
                        write_out(&mut self.sessions[i]);
                    }
                }
            }
        }
        self.reap();
    }

    /// Sends container output to every session.
    pub fn broadcast(&mut self, stream: u8, data: &[u8]) {
        if self.sessions.is_empty() || data.is_empty() {
            return;
        }
        let f = frame(stream, data);
        for s in &mut self.sessions {
            s.output.extend_from_slice(&f);
            write_out(s);
            if s.output.len() > MAX_BACKLOG {
                s.gone = true;
            }
        }
        self.reap();
    }

    /// The container ended: hands each session what is left of its output (at most `limit` in all), then closes.
    pub fn finish(mut self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        for s in &mut self.sessions {
            let _ = s.sock.set_nonblocking(false);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = s.sock.set_write_timeout(Some(left));
            let _ = s.sock.write_all(&s.output);
            let _ = s.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn accept(&mut self) {
        // Bounded: the listener is non-blocking and each round takes one pending connection.
        for _ in 0..16 {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if self.sessions.len() < MAX_SESSIONS && sock.set_nonblocking(true).is_ok() {
                        self.sessions.push(Session {
                            sock,
                            input: Vec::new(),
                            output: Vec::new(),
                            uses_stdin: false,
                            gone: false,
                        });
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn read_session(&mut self, i: usize) {
        let mut chunk = [0u8; 32 * 1024];
        let s = &mut self.sessions[i];
        match s.sock.read(&mut chunk) {
            Ok(0) => s.gone = true,
            Ok(n) => s.input.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => s.gone = true,
        }
        let frames = match take_frames(&mut s.input) {
            Ok(f) => f,
            Err(_) => {
                s.gone = true;
                return;
            }
        };
        for (k, payload) in frames {
            match k {
                kind::STDIN => {
                    if let Some(stdin) = self.stdin.as_mut().filter(|s| !s.close_when_flushed) {
                        stdin.pending.extend_from_slice(&payload);
                    }
                }
                kind::ATTACH_STDIN => self.sessions[i].uses_stdin = true,
                kind::CLOSE_STDIN => {
                    self.sessions[i].uses_stdin = false;
                    self.stdin_session_ended();
                }
                kind::RESIZE => {
                    if let (Some(t), Some((w, h))) = (&self.terminal, crate::server::exec::parse_resize(&payload)) {
                        let _ = crate::sys::set_winsize(t, h, w);
                    }
                }
                _ => {}
            }
        }
        self.flush_stdin();
    }

    /// A session that attached stdin ended it; with `stdinOnce` the container's stdin closes.
    fn stdin_session_ended(&mut self) {
        if self.stdin_once
            && let Some(s) = self.stdin.as_mut()
        {
            s.close_when_flushed = true;
        }
    }

    fn flush_stdin(&mut self) {
        let Some(s) = self.stdin.as_mut() else { return };
        while !s.pending.is_empty() {
            match s.file.write(&s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The container closed its end: nothing more can be delivered.
                    s.pending.clear();
                    s.close_when_flushed = true;
                }
            }
        }
        // A terminal is the container's output too: only a pipe is closed, so EOF reaches the reader.
        if s.close_when_flushed && self.terminal.is_none() {
            self.stdin = None;
        }
    }

    fn reap(&mut self) {
        let mut ended_stdin = false;
        self.sessions.retain(|s| {
            if s.gone && s.uses_stdin {
                ended_stdin = true;
            }
            !s.gone
        });
        if ended_stdin {
            self.stdin_session_ended();
            self.flush_stdin();
        }
    }
}

fn write_out(s: &mut Session) {
    while !s.output.is_empty() {
        match s.sock.write(&s.output) {
            Ok(0) => {
                s.gone = true;
                return;
            }
            Ok(n) => {
                s.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => {
                s.gone = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(a: &mut Attach) {
        let set = a.poll_set();
        let mut fds: Vec<nix::poll::PollFd<'_>> = set.iter().map(|(fd, f)| nix::poll::PollFd::new(*fd, *f)).collect();
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16));
        let rev: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        drop(set);
        a.handle(&rev);
    }

    fn read_frames(c: &mut UnixStream, want: usize) -> Vec<(u8, Vec<u8>)> {
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while got.len() < want {
            let mut chunk = [0u8; 1024];
            let n = c.read(&mut chunk).expect("read");
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
            got.extend(take_frames(&mut buf).expect("frames"));
        }
        got
    }

    #[test]
    fn sessions_get_output_and_stdin_once_closes_the_pipe_when_the_stdin_session_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (pipe_r, pipe_w) = nix::unistd::pipe().expect("pipe");
        let w = File::from(pipe_w);
        nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("fcntl");
        let mut a = Attach::new(listener, Some(w), true, None);

        let mut watcher = UnixStream::connect(&path).expect("connect");
        let mut typer = UnixStream::connect(&path).expect("connect");
        poll_once(&mut a);
        assert_eq!(a.sessions.len(), 2);
        a.broadcast(kind::STDOUT, b"prompt> ");
        assert_eq!(read_frames(&mut watcher, 1), vec![(kind::STDOUT, b"prompt> ".to_vec())]);
        assert_eq!(read_frames(&mut typer, 1), vec![(kind::STDOUT, b"prompt> ".to_vec())]);

        typer.write_all(&[frame(kind::ATTACH_STDIN, b""), frame(kind::STDIN, b"ls\n")].concat()).expect("write");
        poll_once(&mut a);
        let mut r = File::from(pipe_r);
        let mut got = [0u8; 3];
        r.read_exact(&mut got).expect("stdin reached the pipe");
        assert_eq!(&got, b"ls\n");

        // The watcher (no stdin) leaving changes nothing; the typer leaving closes the container's stdin.
        drop(watcher);
        poll_once(&mut a);
        assert!(a.stdin.is_some());
        drop(typer);
        for _ in 0..3 {
            poll_once(&mut a);
        }
        assert!(a.stdin.is_none(), "stdinOnce: the first stdin session's end closes stdin");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("EOF, not a hang");
        assert!(rest.is_empty());
    }

    #[test]
    fn a_session_that_never_reads_is_dropped_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut a = Attach::new(listener, None, false, None);
        let _stuck = UnixStream::connect(&path).expect("connect");
        poll_once(&mut a);
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..(MAX_BACKLOG / block.len() + 64) {
            a.broadcast(kind::STDOUT, &block);
        }
        assert!(a.sessions.is_empty(), "the stuck session was dropped");
    }
}
