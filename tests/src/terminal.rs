//! A client under a pseudo-terminal, driven line by line: interactive clients (`ipmitool sol
//! activate`, `ipmiconsole`) read a terminal, not a pipe. A short python3 script (the `pty`
//! module) holds the terminal wherever the caller starts it ([`start`]: in a namespace, or on
//! this host); the test sends it commands on stdin and reads one answer line per command,
//! everything hex-encoded so that any byte passes.
//!
//! This file needs only std and its sibling `hex` module, so that virtbmc's own cluster
//! tests, which cannot link this crate, include the same file (with `#[path]`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::hex;

/// Commands, one per line: `E <seconds> <hex>` waits for the text after the last match
/// (answers `OK <hex of what came up to and with it>` or `TIMEOUT <hex of what came>`),
/// `S <hex>` types, `X <seconds>` waits for the client to exit (`EXIT <code> <hex>` or
/// `TIMEOUT <hex>`), `K <signal>` signals the client. End of stdin hangs up the terminal.
const SCRIPT: &str = r#"
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
buf, pos, closed = b"", 0, False
def pump(timeout):
    global buf, closed
    if closed:
        return
    r, _, _ = select.select([fd], [], [], timeout)
    if r:
        try:
            d = os.read(fd, 65536)
        except OSError:
            d = b""
        if not d:
            closed = True
        buf += d
def say(*parts):
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    op, *args = line.split()
    if op == "S":
        os.write(fd, bytes.fromhex(args[0]))
        say("OK", "")
    elif op == "K":
        os.kill(pid, int(args[0]))
        say("OK", "")
    elif op == "E":
        end, want = time.time() + float(args[0]), bytes.fromhex(args[1])
        while buf.find(want, pos) < 0 and time.time() < end and not closed:
            pump(0.05)
        i = buf.find(want, pos)
        if i < 0:
            say("TIMEOUT", buf[pos:].hex() or "-")
        else:
            seen, pos = buf[pos:i + len(want)], i + len(want)
            say("OK", seen.hex() or "-")
    elif op == "X":
        end, code = time.time() + float(args[0]), None
        while code is None and time.time() < end:
            pump(0.05)
            p, status = os.waitpid(pid, os.WNOHANG)
            if p:
                code = os.waitstatus_to_exitcode(status)
        while not closed and code is not None:
            pump(0.05)
            if not select.select([fd], [], [], 0)[0]:
                break
        seen, pos = buf[pos:], len(buf)
        say("EXIT" if code is not None else "TIMEOUT", str(code), seen.hex() or "-")
try:
    os.kill(pid, signal.SIGHUP)
except ProcessLookupError:
    pass
"#;

pub struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Everything the client printed so far, for failure messages.
    transcript: String,
    what: String,
}

/// Starts `argv` under the terminal driver; `launch` turns the driver's command line into
/// the command that runs it (`ip netns exec <ns> ...`, or the line itself on this host).
pub fn start(argv: &[&str], launch: impl FnOnce(&[&str]) -> Command) -> Terminal {
    let mut full = vec!["python3", "-u", "-c", SCRIPT];
    full.extend_from_slice(argv);
    let mut child = launch(&full)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", argv.join(" ")));
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    Terminal {
        child,
        stdin,
        stdout,
        transcript: String::new(),
        what: argv.join(" "),
    }
}

impl Terminal {
    fn command(&mut self, line: &str) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("terminal open");
        writeln!(stdin, "{line}").expect("writing to the terminal driver");
        stdin.flush().expect("flushing the terminal driver");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("reading the terminal driver");
        let parts: Vec<String> = answer.split_whitespace().map(str::to_string).collect();
        assert!(!parts.is_empty(), "terminal driver for {} died", self.what);
        if let Some(seen) = parts.last().filter(|p| *p != "-" && parts.len() > 1) {
            let bytes = hex::decode(seen).unwrap_or_default();
            self.transcript.push_str(&String::from_utf8_lossy(&bytes));
        }
        parts
    }

    fn decoded(part: &str) -> String {
        if part == "-" {
            return String::new();
        }
        String::from_utf8_lossy(&hex::decode(part).unwrap_or_default()).into_owned()
    }

    /// Waits until `needle` appears after the last match: what came up to and with it, or
    /// `Err` with what came instead (before the timeout or the client's end).
    pub fn try_expect(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let line = format!(
            "E {} {}",
            timeout.as_secs_f64(),
            hex::encode(needle.as_bytes())
        );
        let parts = self.command(&line);
        let seen = parts.get(1).map_or(String::new(), |p| Self::decoded(p));
        if parts[0] == "OK" {
            Ok(seen)
        } else {
            Err(seen)
        }
    }

    /// Like [`Terminal::try_expect`]; panics with the transcript when `needle` does not come.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        match self.try_expect(needle, timeout) {
            Ok(seen) => seen,
            Err(_) => panic!(
                "{}: no {needle:?} within {timeout:?}; transcript:\n{}",
                self.what, self.transcript
            ),
        }
    }

    /// Sends the client signal `signal` (SIGSTOP to make it a console that stopped reading,
    /// SIGKILL for one that vanished).
    pub fn signal(&mut self, signal: i32) {
        self.command(&format!("K {signal}"));
    }

    /// Types `text`.
    pub fn send(&mut self, text: &str) {
        let line = format!("S {}", hex::encode(text.as_bytes()));
        self.command(&line);
    }

    /// Waits for the client to exit; its exit code and what it printed last.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> (i32, String) {
        let parts = self.command(&format!("X {}", timeout.as_secs_f64()));
        assert_eq!(
            parts[0], "EXIT",
            "{} did not exit within {timeout:?}; transcript:\n{}",
            self.what, self.transcript
        );
        let code = parts[1].parse().unwrap_or(-1);
        (
            code,
            parts.get(2).map_or(String::new(), |p| Self::decoded(p)),
        )
    }

    pub fn transcript(&self) -> &str {
        &self.transcript
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // End of stdin: the driver hangs up the client and exits.
        self.stdin = None;
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
