//! A pair of network namespaces joined by a veth: the BMC side and the client side.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// Interface names live inside their namespace, so they can be fixed.
const BMC_IF: &str = "vbmc0";
const CLIENT_IF: &str = "vcli0";
/// Names of the namespaces the tests make: `vbmc-e2e-<pid>-<n>-bmc` and `...-cli`.
const PREFIX: &str = "vbmc-e2e-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// Two namespaces and a veth between them; both are deleted on drop (also while a test
/// panics). The BMC side holds `bmc_ip`, the client side `client_ip`, in a /24 of 10.x.y.0
/// that only these two namespaces use.
#[derive(Debug)]
pub struct NetnsPair {
    pub bmc: String,
    pub client: String,
    pub bmc_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
}

/// Runs a command, returning an error that names it and carries its stderr.
pub(crate) fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsPair {
    /// A fresh pair with names unique to this process and test.
    pub fn create() -> Self {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("{PREFIX}{pid}-{n}");
        // 10.x.y.0/24 from the per-test counter (and the pid, so that two test binaries
        // running at once do not even look alike). Only these namespaces see it.
        let x = 100 + ((pid as u32 + n / 256) % 100) as u8;
        let y = (n % 256) as u8;
        Self::create_named(&format!("{base}-bmc"), &format!("{base}-cli"), [10, x, y])
    }

    /// A pair with the given names and /24 prefix (the demo uses fixed names).
    pub fn create_named(bmc: &str, client: &str, net: [u8; 3]) -> Self {
        let pair = NetnsPair {
            bmc: bmc.to_string(),
            client: client.to_string(),
            bmc_ip: Ipv4Addr::new(net[0], net[1], net[2], 1),
            client_ip: Ipv4Addr::new(net[0], net[1], net[2], 2),
        };
        // From here on Drop cleans up whatever part was made.
        if let Err(e) = pair.setup() {
            panic!("creating namespaces {bmc}/{client}: {e}");
        }
        pair
    }

    fn setup(&self) -> Result<(), String> {
        let (a, b) = (self.bmc.as_str(), self.client.as_str());
        sh(&["ip", "netns", "add", a])?;
        sh(&["ip", "netns", "add", b])?;
        sh(&[
            "ip", "link", "add", BMC_IF, "netns", a, "type", "veth", "peer", "name", CLIENT_IF,
            "netns", b,
        ])?;
        let a_cidr = format!("{}/24", self.bmc_ip);
        let b_cidr = format!("{}/24", self.client_ip);
        sh(&["ip", "-n", a, "addr", "add", &a_cidr, "dev", BMC_IF])?;
        sh(&["ip", "-n", b, "addr", "add", &b_cidr, "dev", CLIENT_IF])?;
        for (ns, dev) in [(a, BMC_IF), (b, CLIENT_IF)] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// `ip netns exec <ns> args...` as a Command ready to spawn.
    pub fn exec(ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd
    }

    /// `GET url` with curl from inside namespace `ns` (what listens on its loopback or its
    /// veth: the admin endpoint, kubesim); the body, or curl's error.
    pub fn curl(ns: &str, url: &str) -> Result<String, String> {
        Self::curl_with(ns, url, &[])
    }

    /// [`NetnsPair::curl`] with these request headers (`"Authorization: Bearer ..."`).
    pub fn curl_with(ns: &str, url: &str, headers: &[&str]) -> Result<String, String> {
        let mut args = vec!["curl", "-sS", "-f", "-m", "5"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(url);
        let out = Self::exec(ns, &args)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "GET {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Sends one datagram from the client side to an echo server on the BMC side, both run
    /// by the UDP helper binary (`env!("CARGO_BIN_EXE_virtbmc-e2e-udp")`): the veth carries
    /// traffic. (Debian's minimal images have no `ping`.)
    pub fn udp_echo_works(&self, helper: &str) -> bool {
        use std::io::{BufRead, BufReader, Write};
        let bind = format!("{}:7", self.bmc_ip);
        let Ok(mut server) = Self::exec(&self.bmc, &[helper, "echo", &bind, "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return false;
        };
        let mut ready = String::new();
        let _ = BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready);
        let target = format!("{}:7", self.bmc_ip);
        let client = Self::exec(&self.client, &[helper, "send", &target, "2000"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let ok = client.is_ok_and(|mut c| {
            let _ = writeln!(c.stdin.take().unwrap(), "cafe01");
            c.wait_with_output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "reply cafe01")
        });
        let _ = server.kill();
        let _ = server.wait();
        ok
    }

    /// Whether both namespaces exist (for tests of the fixture itself).
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth in it (and so its peer).
        for ns in [&self.bmc, &self.client] {
            if Self::exists(ns)
                && let Err(e) = sh(&["ip", "netns", "del", ns])
            {
                eprintln!("warning: {e}");
            }
        }
    }
}

/// Deletes namespaces left by earlier test processes that were killed before their Drop ran
/// (SIGKILL, Ctrl-C of the harness). Only names of the form `vbmc-e2e-<pid>-...` whose pid is
/// gone are touched.
fn sweep_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}
