//! The two operations nix offers no safe wrapper for: setting a terminal's window size (`TIOCSWINSZ`, when
//! `kubectl exec -t` resizes its terminal) and owning a descriptor received through `SCM_RIGHTS`.
#![allow(unsafe_code)] // one ioctl and one from_raw_fd, each with its SAFETY comment

use std::os::fd::AsRawFd;

/// Sets the window size of the terminal `fd` (a pty master).
pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `fd` is an open descriptor borrowed for the duration of the call; TIOCSWINSZ reads exactly one
    // `winsize` from the pointer, which points at a live, initialised stack value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Takes ownership of a descriptor received through `SCM_RIGHTS` (the kernel installed it in this process for us).
pub fn own_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: the descriptor was just created in this process by recvmsg(SCM_RIGHTS); nothing else owns or closes
    // it, so handing its ownership to an OwnedFd is sound.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Receives one descriptor sent with `SCM_RIGHTS` on a connected Unix socket (blocking), as runc sends a
/// terminal's master end to its `--console-socket`.
pub fn recv_fd(sock: &impl AsRawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            return Ok(own_fd(*fd));
        }
    }
    Err(std::io::Error::other("no descriptor in the message"))
}
