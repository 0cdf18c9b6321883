//! Clients under a pseudo-terminal on this host, for the cluster tests: the end-to-end
//! crate's terminal driver, included as source (that crate links this one, so this one's
//! tests cannot link it). Blocking: call it from `tokio::task::block_in_place` in a
//! multi-threaded runtime.
#![allow(dead_code)]

#[path = "../../../tests/src/hex.rs"]
mod hex;
#[path = "../../../tests/src/terminal.rs"]
mod terminal;

pub use terminal::Terminal;

/// Starts `argv` under a terminal on this host.
pub fn spawn(argv: &[&str]) -> Terminal {
    terminal::start(argv, |line| {
        let mut cmd = std::process::Command::new(line[0]);
        cmd.args(&line[1..]);
        cmd
    })
}
