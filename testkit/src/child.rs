//! Child processes that are killed (by pid) and reaped on drop.

use std::{
    io::{self, BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Cgroup, NetNs};

/// A child process, killed by pid and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    what: String,
}

impl Child {
    /// Spawns `cmd` with piped stdin/stdout (stderr inherited, so it shows in test output).
    pub fn spawn(mut cmd: Command, what: impl Into<String>) -> io::Result<Self> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self { child, stdin, stdout, what: what.into() })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| io::Error::other("stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Reads lines from its stdout until one starts with `prefix`, or it ends. Blocks; callers give their children
    /// their own time limits (the probe does).
    pub fn read_line_starting(&mut self, prefix: &str) -> io::Result<String> {
        let out = self.stdout.as_mut().ok_or_else(|| io::Error::other("stdout closed"))?;
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                return Err(io::Error::other(format!("{} ended before printing {prefix:?}", self.what)));
            }
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    /// Waits for it to exit (at most `limit`), returning whether it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("{} did not exit within {limit:?}", self.what)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A command that runs `program args` with its process first moved into `cgroup` (if any) and then inside
/// `netns` (if any). The shell writes its own pid to `cgroup.procs` and then execs, so the program itself starts in
/// the cgroup.
pub fn spawn_in(cgroup: Option<&Cgroup>, netns: Option<&NetNs>, program: &std::path::Path, args: &[String]) -> Command {
    let mut script = String::new();
    if let Some(cg) = cgroup {
        script.push_str(&format!("echo $$ > '{}/cgroup.procs' || exit 97; ", cg.path().display()));
    }
    script.push_str("exec ");
    if let Some(ns) = netns {
        script.push_str(&format!("nsenter --net='{}' -- ", ns.path().display()));
    }
    script.push_str("\"$@\"");
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh").arg(program).args(args);
    c
}
