//! A small network probe that tests run inside their namespaces and cgroups: tiny TCP/UDP servers that say who they
//! are and whom they see, and clients that report what they got (including the peer address the kernel shows them,
//! which is how socket-level load balancing is observed).
//!
//! The probe runs by re-executing the test binary: an integration test file that uses it declares
//!
//! ```ignore
//! #[test]
//! fn probe_entry() {
//!     skiff_testkit::probe::entry();
//! }
//! ```
//!
//! which does nothing in a normal run, and runs the probe when [`ENV`] is set (then exits the process). Results are
//! printed as lines starting with [`MARK`].
//!
//! Modes (the value of [`ENV`], space separated):
//! - `serve-tcp ADDR ID`: for each connection read one line; `who` gets `id=ID peer=IP:PORT`; `hold` gets the same
//!   and then every further line is echoed back as `ID:LINE`.
//!   A first line `GET …` is answered as HTTP/1.0 with the same text as the body.
//! - `serve-udp ADDR ID`: every datagram gets `id=ID peer=IP:PORT`.
//! - `serve-dns ADDR NAME IP`: a DNS server that knows one name: `A` queries for NAME get IP (TTL 30), everything
//!   else NXDOMAIN.
//! - `tcp COUNT ADDR [PORT]`: COUNT connections, each `who`; prints `ok id=.. peer=.. sockpeer=.. ms=..` or
//!   `err kind=.. ms=..`. With PORT, connection i is made from local port PORT+i.
//! - `udp COUNT ADDR connected|unconnected`: COUNT exchanges; prints `ok id=.. peer=.. from=..` where `from` is the
//!   source the socket saw (getpeername or recvfrom).
//! - `ping COUNT IP`: COUNT ICMP echo requests (raw socket); prints `ok from=IP ms=..` for each reply or
//!   `err kind=.. ms=..`.
//! - `hold ADDR`: one connection; prints `connected id=.. peer=.. sockpeer=..`; then each stdin line is sent and the
//!   reply printed as `reply LINE` (`err ...` when the connection broke).
//!
//! Every wait has a time limit, and servers exit after [`SERVER_LIFETIME`].

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{Cgroup, Child, NetNs, spawn_in};

/// The environment variable that carries the probe's mode.
pub const ENV: &str = "SKIFF_PROBE";
/// The prefix of result lines.
pub const MARK: &str = "SKIFF_PROBE";
/// How long a server lives at most.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(600);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the probe if [`ENV`] is set, then exits the process; returns at once otherwise.
pub fn entry() {
    let Ok(spec) = std::env::var(ENV) else { return };
    let args: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("fatal {e}"));
            1
        }
    };
    let _ = io::stdout().flush();
    std::process::exit(code);
}

/// The program and arguments that run the probe with `spec` from the current test binary (which must declare
/// `probe_entry`, see the module docs).
pub fn invocation(spec: &str) -> io::Result<(PathBuf, Vec<String>, String)> {
    let exe = std::env::current_exe()?;
    let args = ["--exact", "probe_entry", "--nocapture", "--test-threads=1", "-q"].map(String::from).to_vec();
    Ok((exe, args, spec.to_string()))
}

/// Spawns the probe with `spec` inside `cgroup` and `netns` (either optional).
pub fn spawn(cgroup: Option<&Cgroup>, netns: Option<&NetNs>, spec: &str) -> io::Result<Child> {
    let (exe, args, spec) = invocation(spec)?;
    let mut cmd = spawn_in(cgroup, netns, &exe, &args);
    cmd.env(ENV, &spec);
    Child::spawn(cmd, format!("probe `{spec}`"))
}

/// Starts a server and waits until it listens.
pub fn server(netns: &NetNs, spec: &str) -> io::Result<Child> {
    let mut child = spawn(None, Some(netns), spec)?;
    let line = child.read_line_starting(MARK)?;
    if line != "listening" {
        return Err(io::Error::other(format!("server `{spec}` said {line:?}")));
    }
    Ok(child)
}

/// Runs a client to completion and returns its result lines (without the mark).
pub fn client(cgroup: Option<&Cgroup>, netns: Option<&NetNs>, spec: &str) -> io::Result<Vec<String>> {
    let mut child = spawn(cgroup, netns, spec)?;
    let mut lines = Vec::new();
    while let Ok(l) = child.read_line_starting(MARK) {
        lines.push(l);
    }
    child.wait(Duration::from_secs(60))?;
    if let Some(fatal) = lines.iter().find(|l| l.starts_with("fatal")) {
        return Err(io::Error::other(format!("probe `{spec}`: {fatal}")));
    }
    Ok(lines)
}

/// The value of `key=` in a result line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn say(line: &str) {
    println!("{MARK} {line}");
    let _ = io::stdout().flush();
}

fn arg(args: &[String], i: usize) -> io::Result<&str> {
    args.get(i).map(String::as_str).ok_or_else(|| io::Error::other(format!("missing argument {i} in {args:?}")))
}

fn addr(s: &str) -> io::Result<SocketAddr> {
    s.parse().map_err(|e| io::Error::other(format!("bad address {s}: {e}")))
}

fn run(args: &[String]) -> io::Result<()> {
    match arg(args, 0)? {
        "serve-tcp" => serve_tcp(addr(arg(args, 1)?)?, arg(args, 2)?),
        "serve-udp" => serve_udp(addr(arg(args, 1)?)?, arg(args, 2)?),
        "serve-dns" => serve_dns(addr(arg(args, 1)?)?, arg(args, 2)?, arg(args, 3)?),
        "tcp" => {
            let from = args.get(3).map(|p| p.parse::<u16>()).transpose().map_err(io::Error::other)?;
            tcp(count(arg(args, 1)?)?, addr(arg(args, 2)?)?, from)
        }
        "udp" => udp(count(arg(args, 1)?)?, addr(arg(args, 2)?)?, arg(args, 3)? == "connected"),
        "hold" => hold(addr(arg(args, 1)?)?),
        "ping" => ping(count(arg(args, 1)?)?, arg(args, 2)?),
        other => Err(io::Error::other(format!("unknown probe mode {other}"))),
    }
}

/// The Internet checksum of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ping(n: u32, target: &str) -> io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto, setsockopt, socket, sockopt,
    };
    let ip: std::net::Ipv4Addr = target.parse().map_err(|e| io::Error::other(format!("bad address {target}: {e}")))?;
    let sock = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Icmp)?;
    setsockopt(&sock, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 300_000))?;
    let dest = SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
    let id = (std::process::id() & 0xffff) as u16;
    for seq in 0..n {
        let start = Instant::now();
        let mut req = vec![8u8, 0, 0, 0];
        req.extend(id.to_be_bytes());
        req.extend((seq as u16).to_be_bytes());
        req.extend(b"skiff-probe-ping");
        let c = inet_checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        sendto(std::os::fd::AsRawFd::as_raw_fd(&sock), &req, &dest, nix::sys::socket::MsgFlags::empty())?;
        // Replies to other probes' requests arrive on a raw socket too: wait for ours, for at most IO_TIMEOUT.
        let mut buf = [0u8; 1500];
        let result = loop {
            if start.elapsed() > IO_TIMEOUT {
                break Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            match recvfrom::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&sock), &mut buf) {
                Ok((len, from)) => {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    let icmp = &buf[ihl.min(len)..len];
                    if icmp.len() >= 8
                        && icmp[0] == 0
                        && icmp[4..6] == id.to_be_bytes()
                        && icmp[6..8] == (seq as u16).to_be_bytes()
                    {
                        break Ok(from.map(|f| f.ip().to_string()).unwrap_or_default());
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        match result {
            Ok(from) => say(&format!("ok from={from} ms={}", start.elapsed().as_millis())),
            Err(e) => say(&format!("err kind={} ms={}", error_kind(&e), start.elapsed().as_millis())),
        }
    }
    Ok(())
}

fn count(s: &str) -> io::Result<u32> {
    s.parse().map_err(|e| io::Error::other(format!("bad count {s}: {e}")))
}

fn error_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
        io::ErrorKind::PermissionDenied => "denied".into(),
        _ => format!("os{}", e.raw_os_error().unwrap_or(0)),
    }
}

fn serve_dns(addr: SocketAddr, name: &str, ip: &str) -> io::Result<()> {
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| io::Error::other(format!("bad address {ip}: {e}")))?;
    let want = name.trim_end_matches('.').to_ascii_lowercase();
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    say("listening");
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < SERVER_LIFETIME {
        let Ok((len, peer)) = sock.recv_from(&mut buf) else { continue };
        if let Some(answer) = dns_answer(&buf[..len], &want, ip) {
            sock.send_to(&answer, peer)?;
        }
    }
    Ok(())
}

/// The answer to one DNS query: `ip` for an `A` query of `want`, NXDOMAIN otherwise; `None` for garbage.
fn dns_answer(q: &[u8], want: &str, ip: std::net::Ipv4Addr) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    for _ in 0..64 {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let found = labels.join(".") == want;
    let answers = u16::from(found && qtype == 1);
    let rcode = if found { 0 } else { 3 };
    let mut out = vec![q[0], q[1], 0x84 | (q[2] & 0x01), 0x80 | rcode, 0, 1];
    out.extend(answers.to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(question);
    if answers == 1 {
        out.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        out.extend(ip.octets());
    }
    Some(out)
}

fn serve_tcp(addr: SocketAddr, id: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    say("listening");
    let start = Instant::now();
    while start.elapsed() < SERVER_LIFETIME {
        match listener.accept() {
            Ok((stream, peer)) => {
                let id = id.to_string();
                std::thread::spawn(move || {
                    let _ = serve_conn(stream, peer, &id);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_conn(stream: TcpStream, peer: SocketAddr, id: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_LIFETIME))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.starts_with("GET ") {
        // An HTTP client (a pod's wget or curl): the same answer as an HTTP/1.0 response.
        let mut header = String::new();
        while reader.read_line(&mut header)? > 0 && !header.trim().is_empty() {
            header.clear();
        }
        let body = format!("id={id} peer={peer}\n");
        write!(writer, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    writeln!(writer, "id={id} peer={peer}")?;
    if line.trim() != "hold" {
        return Ok(());
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        writeln!(writer, "{id}:{}", line.trim())?;
    }
}

fn serve_udp(addr: SocketAddr, id: &str) -> io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    say("listening");
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < SERVER_LIFETIME {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                sock.send_to(format!("id={id} peer={peer}").as_bytes(), peer)?;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TCP connection to `target` from local port `port` (bound first), within [`IO_TIMEOUT`].
fn connect_from(port: u16, target: SocketAddr) -> io::Result<TcpStream> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, getsockopt, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsFd as _;
    let SocketAddr::V4(target) = target else { return Err(io::Error::other("IPv4 only")) };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, port))?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(target)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    let ms = u16::try_from(IO_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    if poll(&mut fds, PollTimeout::from(ms))? == 0 {
        return Err(io::Error::from(io::ErrorKind::TimedOut));
    }
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn tcp(n: u32, target: SocketAddr, first_port: Option<u16>) -> io::Result<()> {
    for i in 0..n {
        let start = Instant::now();
        let ms = |s: Instant| s.elapsed().as_millis();
        let attempt = || -> io::Result<String> {
            let stream = match first_port {
                Some(p) => connect_from(p.wrapping_add(i as u16), target)?,
                None => TcpStream::connect_timeout(&target, IO_TIMEOUT)?,
            };
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            let sockpeer = stream.peer_addr()?;
            (&stream).write_all(b"who\n")?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            Ok(format!("{} sockpeer={sockpeer}", line.trim()))
        };
        match attempt() {
            Ok(s) => say(&format!("ok {s} ms={}", ms(start))),
            Err(e) => say(&format!("err kind={} ms={}", error_kind(&e), ms(start))),
        }
    }
    Ok(())
}

fn udp(n: u32, target: SocketAddr, connected: bool) -> io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    if connected {
        sock.connect(target)?;
    }
    let mut buf = [0u8; 1500];
    for _ in 0..n {
        let start = Instant::now();
        let mut attempt = || -> io::Result<String> {
            let (len, from) = if connected {
                sock.send(b"who")?;
                let len = sock.recv(&mut buf)?;
                (len, sock.peer_addr()?)
            } else {
                sock.send_to(b"who", target)?;
                sock.recv_from(&mut buf)?
            };
            Ok(format!("{} from={from}", String::from_utf8_lossy(&buf[..len])))
        };
        match attempt() {
            Ok(s) => say(&format!("ok {s} ms={}", start.elapsed().as_millis())),
            Err(e) => say(&format!("err kind={} ms={}", error_kind(&e), start.elapsed().as_millis())),
        }
    }
    Ok(())
}

fn hold(target: SocketAddr) -> io::Result<()> {
    let stream = match TcpStream::connect_timeout(&target, IO_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("err kind={}", error_kind(&e)));
            return Ok(());
        }
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let sockpeer = stream.peer_addr()?;
    (&stream).write_all(b"hold\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    say(&format!("connected {} sockpeer={sockpeer}", line.trim()));
    let stdin = io::stdin();
    for input in stdin.lock().lines() {
        let input = input?;
        line.clear();
        let exchange = (|| -> io::Result<usize> {
            (&stream).write_all(format!("{input}\n").as_bytes())?;
            reader.read_line(&mut line)
        })();
        match exchange {
            Ok(0) => say("err kind=closed"),
            Ok(_) => say(&format!("reply {}", line.trim())),
            Err(e) => say(&format!("err kind={}", error_kind(&e))),
        }
    }
    Ok(())
}
