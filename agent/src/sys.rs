//! The operations nix offers no safe wrapper for: setting a terminal's window size (`TIOCSWINSZ`, when
//! `kubectl exec -t` resizes its terminal), owning a descriptor received through `SCM_RIGHTS`, and sending one
//! Ethernet frame on a packet socket (gratuitous ARP).
#![allow(unsafe_code)] // one ioctl, two from_raw_fd, one socket and one sendto, each with its SAFETY comment

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

/// Sends one Ethernet `frame` (destination MAC first) out of interface `ifindex` of this network namespace.
pub fn send_frame(ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    use std::os::fd::FromRawFd as _;
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: a plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain integers and arrays; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| std::io::Error::other("ifindex out of range"))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(frame.get(..6).ok_or_else(|| std::io::Error::other("short frame"))?);
    // SAFETY: `fd` is an open packet socket; the buffer pointer and length describe `frame`, and the address
    // pointer and length describe the live `addr` value.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
