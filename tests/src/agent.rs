//! The agent under test: started in the BMC namespace, killed (and its namespaces deleted)
//! on drop, also when the test panics.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{Iface, Out};
use crate::netns::NetnsPair;
use crate::vms::Vm;

/// Where the admin endpoint listens inside the BMC namespace (its own loopback).
const ADMIN: &str = "127.0.0.1:9623";
/// Upper bound for any single client run; `timeout` kills a client that hangs.
const CLIENT_TIMEOUT_SECS: &str = "60";

/// The agent binary: `$VIRTBMC_BIN`, else `<target dir>/release/virtbmc`.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRTBMC_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/virtbmc")
}

/// Options for one agent. Defaults: one VM `vm-0=6230` (off), users `admin:password:admin`
/// and `viewer:viewer:user`.
#[derive(Debug, Default, Clone)]
pub struct BmcBuilder {
    vms: Vec<String>,
    users: Vec<String>,
    args: Vec<String>,
    netns: Option<(String, String, [u8; 3])>,
    log_level: Option<String>,
    quiet: bool,
    binary: Option<PathBuf>,
}

impl BmcBuilder {
    /// `--vm NAME=PORT[,on|off]`
    pub fn vm(mut self, spec: &str) -> Self {
        self.vms.push(spec.to_string());
        self
    }
    /// `--user NAME:PASSWORD[:PRIV]`
    pub fn user(mut self, spec: &str) -> Self {
        self.users.push(spec.to_string());
        self
    }
    /// Any other flag, e.g. `.arg("--max-sessions").arg("2")`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    /// Fixed namespace names and /24 instead of the unique per-test ones (the demo).
    pub fn netns(mut self, bmc: &str, client: &str, net: [u8; 3]) -> Self {
        self.netns = Some((bmc.to_string(), client.to_string(), net));
        self
    }

    /// The agent binary (default: [`agent_binary`]).
    pub fn binary(mut self, path: &std::path::Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }
    /// RUST_LOG for the agent when the environment sets none (default `debug`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }
    /// Do not echo each client run to stderr (the demo prints them itself).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Creates the namespaces, starts the agent and waits until `/healthz` answers.
    pub fn start(self) -> Bmc {
        let bin = self.binary.clone().unwrap_or_else(agent_binary);
        assert!(
            bin.is_file(),
            "agent binary {} not found: run `cargo build -p virtbmc --release` or set VIRTBMC_BIN",
            bin.display()
        );
        let net = match &self.netns {
            Some((a, b, n)) => NetnsPair::create_named(a, b, *n),
            None => NetnsPair::create(),
        };
        let vms = if self.vms.is_empty() {
            vec!["vm-0=6230".to_string()]
        } else {
            self.vms
        };
        let users = if self.users.is_empty() {
            vec![
                "admin:password:admin".to_string(),
                "viewer:viewer:user".to_string(),
            ]
        } else {
            self.users
        };
        let mut args: Vec<String> = vec![
            bin.display().to_string(),
            "--listen".into(),
            net.bmc_ip.to_string(),
            "--admin".into(),
            ADMIN.into(),
        ];
        for v in &vms {
            args.extend(["--vm".to_string(), v.clone()]);
        }
        for u in &users {
            args.extend(["--user".to_string(), u.clone()]);
        }
        args.extend(self.args.iter().cloned());

        let log_path = std::env::temp_dir().join(format!("{}.log", net.bmc));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = NetnsPair::exec(&net.bmc, &argv);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", self.log_level.as_deref().unwrap_or("debug"));
        }
        let cmdline = format!("ip netns exec {} {}", net.bmc, argv.join(" "));
        // `ip netns exec` execs the agent, so this child's pid is the agent's.
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmdline}: {e}"));
        let bmc = Bmc {
            child: Mutex::new(child),
            log_path,
            cmdline,
            net,
            quiet: self.quiet,
        };
        bmc.wait_healthy(Duration::from_secs(15));
        bmc
    }
}

/// A running agent in its own namespace pair.
pub struct Bmc {
    child: Mutex<Child>,
    log_path: PathBuf,
    cmdline: String,
    quiet: bool,
    /// Dropped after the agent is killed (field order does not matter: Drop kills first).
    pub net: NetnsPair,
}

impl Bmc {
    pub fn builder() -> BmcBuilder {
        BmcBuilder::default()
    }

    /// The agent's address, as clients in the client namespace reach it.
    pub fn ip(&self) -> String {
        self.net.bmc_ip.to_string()
    }

    /// The command line the agent was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The agent's stderr so far.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// True while the agent process runs.
    /// The agent's process id (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    pub fn alive(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if !self.alive() {
                panic!(
                    "agent exited during start-up\n$ {}\n{}",
                    self.cmdline,
                    self.log()
                );
            }
            if self.http_get("/healthz").is_ok_and(|b| b.trim() == "ok") {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "agent did not answer /healthz within {limit:?}\n$ {}\n{}",
                    self.cmdline,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the admin endpoint (from inside the BMC namespace).
    pub fn http_get(&self, path: &str) -> Result<String, String> {
        NetnsPair::curl(&self.net.bmc, &format!("http://{ADMIN}{path}"))
    }

    /// Every VM as `/vms` reports it.
    #[track_caller]
    pub fn vms(&self) -> Vec<Vm> {
        let body = self
            .http_get("/vms")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        Vm::parse_all(&body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One VM by name.
    #[track_caller]
    pub fn vm(&self, name: &str) -> Vm {
        let vms = self.vms();
        vms.iter()
            .find(|v| v.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no VM {name} in /vms: {vms:?}"))
    }

    /// Polls `/vms` until `pred` holds for the VM; panics with the last state after `limit`.
    #[track_caller]
    pub fn wait_vm(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Vm) -> bool,
    ) -> Vm {
        let start = Instant::now();
        loop {
            let vm = self.vm(name);
            if pred(&vm) {
                return vm;
            }
            if start.elapsed() > limit {
                panic!("{name}: waited {limit:?} for {what}; last /vms state: {vm:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the VM's power is `on` or `off` (as wanted) and not in a transition.
    #[track_caller]
    pub fn wait_power(&self, name: &str, power: &str) -> Vm {
        self.wait_vm(
            name,
            &format!("power={power}"),
            Duration::from_secs(10),
            |v| v.power == power,
        )
    }

    /// Runs `args` in the client namespace under `timeout`; `--foreground` keeps the client in
    /// our process group, so a Ctrl-C reaches it too.
    pub fn client(&self, args: &[&str]) -> Out {
        let mut argv = vec!["timeout", "--foreground", CLIENT_TIMEOUT_SECS];
        argv.extend_from_slice(args);
        let cmd = NetnsPair::exec(&self.net.client, &argv);
        let out = Out::run(cmd, args.join(" "));
        if !self.quiet {
            // Captured by the test harness; shown when the test fails.
            eprintln!("{out}");
        }
        out
    }

    /// `ipmitool <iface> -U user -P pass -H <bmc> -p port args...`
    pub fn ipmitool(&self, iface: Iface, user: &str, pass: &str, port: u16, args: &[&str]) -> Out {
        let ip = self.ip();
        let port = port.to_string();
        let iface_args = iface.args();
        let mut argv: Vec<&str> = vec!["ipmitool"];
        argv.extend(iface_args.iter().map(String::as_str));
        argv.extend(["-U", user, "-P", pass, "-H", &ip, "-p", &port]);
        argv.extend_from_slice(args);
        self.client(&argv)
    }

    /// Like [`Bmc::ipmitool`] but to another host and port in the client namespace (a relay
    /// such as the UDP helper's `dup-proxy`).
    pub fn ipmitool_via(&self, host: &str, port: u16, iface: Iface, args: &[&str]) -> Out {
        let port = port.to_string();
        let iface_args = iface.args();
        let mut argv: Vec<&str> = vec!["ipmitool"];
        argv.extend(iface_args.iter().map(String::as_str));
        argv.extend(["-U", "admin", "-P", "password", "-H", host, "-p", &port]);
        argv.extend_from_slice(args);
        self.client(&argv)
    }

    /// ipmitool as `admin`/`password`.
    pub fn admin(&self, iface: Iface, port: u16, args: &[&str]) -> Out {
        self.ipmitool(iface, "admin", "password", port, args)
    }

    /// A freeipmi tool as `admin`/`password`: `tool -h <bmc>:port -u admin -p password args...`
    pub fn freeipmi(&self, tool: &str, port: u16, args: &[&str]) -> Out {
        let host = format!("{}:{port}", self.ip());
        let mut argv = vec![tool, "-h", &host, "-u", "admin", "-p", "password"];
        argv.extend_from_slice(args);
        self.client(&argv)
    }

    /// Starts `argv` under a terminal in the client namespace.
    pub fn terminal(&self, argv: &[&str]) -> crate::Terminal {
        crate::terminal::start(argv, |line| NetnsPair::exec(&self.net.client, line))
    }

    /// Starts a long-running client in the client namespace with piped stdin/stdout
    /// (e.g. `ipmitool ... shell`, which holds its session open).
    pub fn spawn_client(&self, args: &[&str]) -> Child {
        NetnsPair::exec(&self.net.client, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", args.join(" ")))
    }

    /// Sends raw datagrams from the client namespace with the helper binary `udp_helper`
    /// (pass `env!("CARGO_BIN_EXE_virtbmc-e2e-udp")`), waiting up to `wait_ms` for one reply
    /// after each. Returns the reply (if any) per datagram.
    pub fn udp(
        &self,
        helper: &str,
        port: u16,
        datagrams: &[Vec<u8>],
        wait_ms: u64,
    ) -> Vec<Option<Vec<u8>>> {
        let target = format!("{}:{port}", self.ip());
        let wait = wait_ms.to_string();
        let mut child = NetnsPair::exec(&self.net.client, &[helper, "send", &target, &wait])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {helper}: {e}"));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            for d in datagrams {
                writeln!(stdin, "{}", crate::hex::encode(d)).unwrap();
            }
        }
        let out = child.wait_with_output().expect("udp helper");
        assert!(out.status.success(), "udp helper failed: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let replies: Vec<Option<Vec<u8>>> = text
            .lines()
            .map(|l| {
                l.strip_prefix("reply ")
                    .map(|h| crate::hex::decode(h).expect("helper prints hex"))
            })
            .collect();
        assert_eq!(replies.len(), datagrams.len(), "helper output: {text}");
        replies
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n$ {}\n{}",
                self.log_path.display(),
                self.cmdline,
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
        // self.net drops next and deletes both namespaces.
    }
}
