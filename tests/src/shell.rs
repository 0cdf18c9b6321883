//! `ipmitool ... shell` in the client namespace: a real client that holds one session open
//! across commands, with its output read on a thread so a test can wait with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Bmc, Iface};

pub struct Shell {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    /// Starts the shell as `admin`/`password` against the BMC on `port`.
    pub fn open(bmc: &Bmc, iface: Iface, port: u16) -> Shell {
        let ip = bmc.ip();
        let port = port.to_string();
        let iface_name = if iface == Iface::Lan {
            "lan"
        } else {
            "lanplus"
        };
        let mut child = bmc.spawn_client(&[
            "ipmitool", "-I", iface_name, "-U", "admin", "-P", "password", "-H", &ip, "-p", &port,
            "shell",
        ]);
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Shell { child, lines }
    }

    /// Sends a command and waits for a line containing `want`.
    pub fn run(&mut self, cmd: &str, want: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{cmd}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return Ok(()),
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        Err(format!(
            "no {want:?} after {cmd:?}; shell printed: {seen:?}"
        ))
    }

    /// Leaves the shell the way a user does (`exit`, which closes the session).
    pub fn close(mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin, "exit");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
