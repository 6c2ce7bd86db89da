//! Helpers of the tests that run `skiff server` as a process: the process ended on drop, a free port.

#![allow(dead_code)]

use std::process::Child;

/// A running `skiff server`, killed (by pid) and reaped when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
