//! The per-container shim: a small process that outlives agent restarts.
//!
//! `<agent binary> agent shim --id ID --bundle DIR --runc PATH --root DIR --log FILE --exit FILE --log-max BYTES`
//!
//! 1. starts a new session and becomes a child subreaper;
//! 2. runs `runc run --detach` with pipes as the container's stdout and stderr (runc exits; the container's init is
//!    re-parented to the shim);
//! 3. prints `started <pid>` (or `failed <message>`) on stdout for the agent, once;
//! 4. copies the pipes to the log file in the CRI format (`<RFC 3339 nanos> stdout|stderr F|P <line>`), rotating the
//!    file (to `<file>.1`) past `--log-max` bytes;
//! 5. serves the attach socket (`attach.sock` in the bundle, see [`super::attach`]): output to every attached
//!    session, and stdin (a pipe, with `--stdin true`) from them;
//! 6. when the container ends, drains the pipes (at most 2 s) and writes the exit record `--exit` atomically.
//!
//! With `--tty true` runc hands the shim the terminal's master end (through a console socket) and that one
//! descriptor is the container's output and input.
//!
//! It uses `poll(2)` on the pipes, the attach sessions and a signalfd for SIGCHLD: one thread, no runtime.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::ExitRecord;
use super::attach;
use super::shim_attach::Attach;

/// The console socket's name in the bundle (runc sends the terminal's master end there).
const CONSOLE_SOCKET: &str = "console.sock";

fn set_nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Longest line kept whole; longer output is split into partial (`P`) records, like CRI runtimes do.
const MAX_LINE: usize = 16 * 1024;

/// The shim's arguments.
#[derive(Clone, Debug, Default)]
pub struct ShimArgs {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// runc executable.
    pub runc: PathBuf,
    /// runc state root.
    pub root: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Exit record.
    pub exit: PathBuf,
    /// Rotation size.
    pub log_max: u64,
    /// The container reads stdin (`stdin: true`): a pipe the attach socket writes to.
    pub stdin: bool,
    /// Close stdin when the first attached session that used it ends (`stdinOnce`).
    pub stdin_once: bool,
    /// The container runs on a terminal (`tty: true`).
    pub tty: bool,
}

impl ShimArgs {
    /// The flags that reproduce these arguments.
    pub fn to_flags(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            p(&self.bundle),
            "--runc".into(),
            p(&self.runc),
            "--root".into(),
            p(&self.root),
            "--log".into(),
            p(&self.log),
            "--exit".into(),
            p(&self.exit),
            "--log-max".into(),
            self.log_max.to_string(),
            "--stdin".into(),
            self.stdin.to_string(),
            "--stdin-once".into(),
            self.stdin_once.to_string(),
            "--tty".into(),
            self.tty.to_string(),
        ]
    }

    /// Parses the flags.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut a = ShimArgs { log_max: 10 << 20, ..Default::default() };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?.clone();
            match flag.as_str() {
                "--id" => a.id = value,
                "--bundle" => a.bundle = value.into(),
                "--runc" => a.runc = value.into(),
                "--root" => a.root = value.into(),
                "--log" => a.log = value.into(),
                "--exit" => a.exit = value.into(),
                "--log-max" => a.log_max = value.parse().map_err(|_| format!("bad --log-max {value}"))?,
                "--stdin" => a.stdin = value.parse().map_err(|_| format!("bad --stdin {value}"))?,
                "--stdin-once" => a.stdin_once = value.parse().map_err(|_| format!("bad --stdin-once {value}"))?,
                "--tty" => a.tty = value.parse().map_err(|_| format!("bad --tty {value}"))?,
                other => return Err(format!("unknown shim flag {other}")),
            }
        }
        if a.id.is_empty() || a.bundle.as_os_str().is_empty() || a.exit.as_os_str().is_empty() {
            return Err("--id, --bundle and --exit are required".into());
        }
        Ok(a)
    }
}

/// Runs the shim with these command-line flags; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let args = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skiff shim: {e}");
            return 2;
        }
    };
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skiff shim {}: {e}", args.id);
            1
        }
    }
}

fn now_rfc3339() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

fn write_exit(path: &Path, record: &ExitRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// The last error runc logged (its `--log-format json` file), for start failures.
pub fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(args: &ShimArgs) -> std::io::Result<()> {
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    // The children's signal masks are reset by std's spawn, so the container does not inherit this.
    mask.thread_block().map_err(std::io::Error::from)?;
    let sigfd =
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(std::io::Error::from)?;

    // Socket paths go through a descriptor of the bundle directory: the bundle's own path may be too long for one.
    let bundle_dir = File::open(&args.bundle)?;
    let via_dir =
        |name: &str| PathBuf::from(format!("/proc/{}/fd/{}/{name}", std::process::id(), bundle_dir.as_raw_fd()));
    let _ = std::fs::remove_file(args.bundle.join(attach::SOCKET));
    let attach_listener = UnixListener::bind(via_dir(attach::SOCKET))?;
    attach_listener.set_nonblocking(true)?;
    let console = if args.tty {
        let _ = std::fs::remove_file(args.bundle.join(CONSOLE_SOCKET));
        Some(UnixListener::bind(via_dir(CONSOLE_SOCKET))?)
    } else {
        None
    };
    let mut stdin_write: Option<File> = None;
    let mut runc_stdin = Stdio::null();
    if args.stdin && !args.tty {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        set_nonblocking(&w)?;
        stdin_write = Some(File::from(w));
        runc_stdin = Stdio::from(r);
    }
    let mut pipes = Vec::new();
    let (runc_out, runc_err) = if args.tty {
        (Stdio::null(), Stdio::null())
    } else {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        pipes.push(Stream::new("stdout", attach::kind::STDOUT, out_r));
        pipes.push(Stream::new("stderr", attach::kind::STDERR, err_r));
        (Stdio::from(out_w), Stdio::from(err_w))
    };
    let runc_log = args.bundle.join("runc.log");
    let pid_file = args.bundle.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut runc = Command::new(&args.runc);
    runc.arg("--root").arg(&args.root).arg("--log").arg(&runc_log).args(["--log-format", "json", "run", "--detach"]);
    if console.is_some() {
        runc.arg("--console-socket").arg(via_dir(CONSOLE_SOCKET));
    }
    let status = runc
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(runc_stdin)
        .stdout(runc_out)
        .stderr(runc_err)
        .status();
    drop(runc);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("running {}: {e}", args.runc.display());
            let _ = write_exit(&args.exit, &start_failure(&msg));
            say(&format!("failed {msg}"));
            return Ok(());
        }
    };
    let pid: Option<i32> = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok());
    let Some(pid) = pid.filter(|_| status.success()) else {
        let msg = runc_error(&runc_log).unwrap_or_else(|| format!("runc run exited with {status}"));
        let _ = write_exit(&args.exit, &start_failure(&msg));
        say(&format!("failed {}", msg.replace('\n', " ")));
        return Ok(());
    };
    let mut terminal = None;
    if let Some(listener) = console {
        let _ = std::fs::remove_file(args.bundle.join(CONSOLE_SOCKET));
        // runc sent the terminal before it returned; the message waits in the socket.
        listener.set_nonblocking(true)?;
        let master = listener.accept().and_then(|(sock, _)| crate::sys::recv_fd(&sock)).map(File::from);
        match master {
            Ok(m) => {
                let reader = m.try_clone()?;
                // The one open file description is shared: non-blocking for the stdin writer, which the output
                // reader tolerates (it reads only after poll says so, and treats EAGAIN as "nothing yet").
                set_nonblocking(&m)?;
                pipes.push(Stream::new("stdout", attach::kind::STDOUT, reader.into()));
                if args.stdin {
                    stdin_write = Some(m.try_clone()?);
                }
                terminal = Some(m);
            }
            Err(e) => {
                let msg = format!("receiving the container's terminal from runc: {e}");
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = write_exit(&args.exit, &start_failure(&msg));
                say(&format!("failed {msg}"));
                return Ok(());
            }
        }
    }
    let mut attach = Attach::new(attach_listener, stdin_write, args.stdin_once, terminal);
    say(&format!("started {pid}"));

    let mut log = LogFile::open(&args.log, args.log_max)?;
    let mut streams = pipes;
    let mut exit: Option<ExitRecord> = None;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if streams.iter().all(|s| s.eof) && exit.is_some() {
            break;
        }
        if let Some(d) = drain_deadline
            && Instant::now() >= d
        {
            break;
        }
        let timeout = match drain_deadline {
            Some(_) => PollTimeout::from(100u16),
            None => PollTimeout::NONE,
        };
        let (ready, ready_sig, attach_events) = {
            let attach_set = attach.poll_set();
            let mut fds = Vec::with_capacity(streams.len() + 1 + attach_set.len());
            for s in &streams {
                let flags = if s.eof { PollFlags::empty() } else { PollFlags::POLLIN };
                fds.push(PollFd::new(s.fd.as_fd(), flags));
            }
            fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
            fds.extend(attach_set.iter().map(|(fd, flags)| PollFd::new(*fd, *flags)));
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let events: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
            let n = streams.len();
            (
                events[..n].iter().map(|e| !e.is_empty()).collect::<Vec<bool>>(),
                !events[n].is_empty(),
                events[n + 1..].to_vec(),
            )
        };
        for (i, hit) in ready.into_iter().enumerate() {
            if hit {
                let data = streams[i].read_into(&mut log)?;
                attach.broadcast(streams[i].kind, &data);
            }
        }
        attach.handle(&attach_events);
        if ready_sig {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p == Pid::from_raw(pid) => {
                        exit = Some(ExitRecord {
                            exit_code: code,
                            signal: None,
                            finished_at: now_rfc3339(),
                            start_error: None,
                        });
                    }
                    Ok(WaitStatus::Signaled(p, sig, _)) if p == Pid::from_raw(pid) => {
                        exit = Some(ExitRecord {
                            exit_code: 128 + sig as i32,
                            signal: Some(sig as i32),
                            finished_at: now_rfc3339(),
                            start_error: None,
                        });
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if exit.is_some() && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }
    attach.finish(Duration::from_secs(1));
    let _ = std::fs::remove_file(args.bundle.join(attach::SOCKET));
    for s in &mut streams {
        s.flush_partial(&mut log)?;
    }
    let record = exit.unwrap_or_else(|| ExitRecord {
        exit_code: 255,
        signal: None,
        finished_at: now_rfc3339(),
        start_error: Some("the shim lost track of the container".into()),
    });
    write_exit(&args.exit, &record)
}

fn start_failure(msg: &str) -> ExitRecord {
    ExitRecord { exit_code: 128, signal: None, finished_at: now_rfc3339(), start_error: Some(msg.to_string()) }
}

/// One of the container's output pipes.
struct Stream {
    name: &'static str,
    kind: u8,
    fd: File,
    buf: Vec<u8>,
    eof: bool,
}

impl Stream {
    fn new(name: &'static str, kind: u8, fd: OwnedFd) -> Self {
        Stream { name, kind, fd: File::from(fd), buf: Vec::new(), eof: false }
    }

    /// Reads what is there into the log; returns the bytes read (for attached sessions).
    fn read_into(&mut self, log: &mut LogFile) -> std::io::Result<Vec<u8>> {
        let mut chunk = [0u8; 65536];
        match self.fd.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                self.flush_partial(log)?;
                Ok(Vec::new())
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    log.record(self.name, 'F', &line[..line.len() - 1])?;
                }
                while self.buf.len() >= MAX_LINE {
                    let part: Vec<u8> = self.buf.drain(..MAX_LINE).collect();
                    log.record(self.name, 'P', &part)?;
                }
                Ok(chunk[..n].to_vec())
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => {
                Ok(Vec::new())
            }
            Err(_) => {
                // EIO from a terminal whose container ended is its end of output.
                self.eof = true;
                self.flush_partial(log)?;
                Ok(Vec::new())
            }
        }
    }

    fn flush_partial(&mut self, log: &mut LogFile) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            log.record(self.name, 'F', &rest)?;
        }
        Ok(())
    }
}

/// The CRI-format log file with size-based rotation.
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogFile {
    fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path: path.to_path_buf(), file, size, max: max.max(4096) })
    }

    fn record(&mut self, stream: &str, tag: char, content: &[u8]) -> std::io::Result<()> {
        let mut line = format!("{} {stream} {tag} ", now_rfc3339()).into_bytes();
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max && self.size > 0 {
            let rotated = PathBuf::from(format!("{}.1", self.path.display()));
            std::fs::rename(&self.path, rotated)?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_flags_round_trip() {
        let a = ShimArgs {
            id: "c1".into(),
            bundle: "/b".into(),
            runc: "runc".into(),
            root: "/r".into(),
            log: "/l".into(),
            exit: "/e.json".into(),
            log_max: 4096,
            stdin: true,
            stdin_once: true,
            tty: false,
        };
        let b = ShimArgs::parse(&a.to_flags()).expect("parses");
        assert_eq!(b.id, "c1");
        assert_eq!(b.exit, PathBuf::from("/e.json"));
        assert_eq!(b.log_max, 4096);
        assert!(b.stdin && b.stdin_once && !b.tty);
        assert!(ShimArgs::parse(&["--id".into()]).is_err());
    }

    #[test]
    fn log_lines_are_cri_records_and_rotate_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path, 4096).expect("open");
        for i in 0..100 {
            log.record("stdout", 'F', format!("line {i}").as_bytes()).expect("write");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().expect("a line");
        let parts: Vec<&str> = first.splitn(4, ' ').collect();
        assert!(parts[0].ends_with('Z') && parts[0].contains('T'), "{first}");
        assert_eq!(&parts[1..3], &["stdout", "F"]);
        assert!(dir.path().join("0.log.1").exists(), "rotated");
        assert!(text.ends_with("line 99\n"));
    }

    #[test]
    fn the_last_runc_error_is_the_start_failure_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("runc.log");
        std::fs::write(
            &p,
            "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .expect("write");
        assert_eq!(runc_error(&p).as_deref(), Some("exec: \"nope\": not found"));
    }
}
