//! Running real clients in the client namespace and keeping what they printed.

use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

/// What a client printed and how it exited. A client's exit code says little:
/// tests read the state back through `/vms` or another client as well.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmdline: String,
    /// None when killed by a signal (`timeout` sends one after its limit).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout and stderr together, for messages that a client prints on either.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the full output unless the client exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "client failed:\n{self}");
        self
    }

    /// Panics with the full output unless stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "expected {needle:?} on stdout:\n{self}"
        );
        self
    }

    pub(crate) fn run(mut cmd: Command, cmdline: String) -> Out {
        let start = Instant::now();
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        Out {
            cmdline,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.cmdline)?;
        for line in self.stdout.lines() {
            writeln!(f, "{line}")?;
        }
        for line in self.stderr.lines() {
            writeln!(f, "[stderr] {line}")?;
        }
        let code = self.code.map_or("signal".to_string(), |c| c.to_string());
        write!(f, "[rc={code} elapsed={:.3}s]", self.elapsed.as_secs_f64())
    }
}

/// ipmitool's interface and cipher suite choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    /// `-I lan` (IPMI 1.5)
    Lan,
    /// `-I lanplus` without `-C`: ipmitool asks for the cipher suites and picks one.
    Lanplus,
    /// `-I lanplus -C N`
    LanplusC(u8),
}

impl Iface {
    pub(crate) fn args(self) -> Vec<String> {
        match self {
            Iface::Lan => vec!["-I".into(), "lan".into()],
            Iface::Lanplus => vec!["-I".into(), "lanplus".into()],
            Iface::LanplusC(c) => vec!["-I".into(), "lanplus".into(), "-C".into(), c.to_string()],
        }
    }
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Iface::Lan => write!(f, "lan"),
            Iface::Lanplus => write!(f, "lanplus"),
            Iface::LanplusC(c) => write!(f, "lanplus-C{c}"),
        }
    }
}
