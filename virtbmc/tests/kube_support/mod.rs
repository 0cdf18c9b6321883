//! Shared by the kube_*.rs tests: kubesim in-process, the cluster backend and a registry
//! bound on 127.0.0.1, and the real ipmitool.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use kubesim::rbac::AuthConfig;
use kubesim::{Config, Handle, Kind, Server};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use virtbmc::agent::metrics::Metrics;
use virtbmc::agent::registry::Registry;
use virtbmc::cluster::role::Role;
use virtbmc::cluster::{ClusterOptions, KubeBackend, serve};
use virtbmc::engine::config::BmcConfig;

pub const NS: &str = "default";
pub const T: Duration = Duration::from_secs(15);

/// The agents' ServiceAccount (`--role agent`), as the shipped manifests bind it.
pub const AGENT_USER: &str = "system:serviceaccount:virtbmc-system:virtbmc";
/// The bearer token of [`AGENT_USER`].
pub const AGENT_TOKEN: &str = "agent-sa-token";
/// The controller's ServiceAccount (`--role controller`).
pub const CONTROLLER_USER: &str = "system:serviceaccount:virtbmc-system:virtbmc-controller";
/// The bearer token of [`CONTROLLER_USER`].
pub const CONTROLLER_TOKEN: &str = "controller-sa-token";
/// `--role all` in one process: the controller's ServiceAccount with the agent's ClusterRole
/// bound too ([`ALL_ROLES_BINDING`]), as one would deploy it; the group carries that binding
/// so that [`CONTROLLER_TOKEN`] alone holds the controller's rules only.
pub const ALL_ROLES_TOKEN: &str = "all-roles-token";
const ALL_ROLES_GROUP: &str = "virtbmc-test:all-roles";
const ALL_ROLES_BINDING: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: virtbmc-test-all-roles}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: virtbmc-agent}
subjects: [{kind: Group, name: 'virtbmc-test:all-roles'}]
";
/// A cluster-admin token, for a test's own requests over HTTP.
pub const ADMIN_TOKEN: &str = "admin-token";

/// Tokens for the agent, the controller, both roles in one and an admin, and the RBAC
/// objects of these manifests (paths under the repository's `manifests/`) enforced.
pub fn policy(manifests: &[&str]) -> AuthConfig {
    let mut auth = AuthConfig::default();
    auth.add_token(&format!("{AGENT_TOKEN}={AGENT_USER}"))
        .unwrap();
    auth.add_token(&format!("{CONTROLLER_TOKEN}={CONTROLLER_USER}"))
        .unwrap();
    auth.add_token(&format!(
        "{ALL_ROLES_TOKEN}={CONTROLLER_USER},{ALL_ROLES_GROUP}"
    ))
    .unwrap();
    auth.add_token(&format!("{ADMIN_TOKEN}=kubernetes-admin,system:masters"))
        .unwrap();
    for m in manifests {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(m);
        auth.add_manifest_file(&path).unwrap();
    }
    // Grants nothing where the manifests hold no virtbmc-agent ClusterRole (label mode).
    auth.add_manifest(ALL_ROLES_BINDING).unwrap();
    auth
}

/// The token and user a process of this role authenticates as. The label mode's manifest
/// gives its one ServiceAccount both roles.
pub fn identity_of(opts: &ClusterOptions) -> (&'static str, &'static str) {
    match (opts.role, opts.labels.is_some()) {
        (_, true) | (Role::Agent, false) => (AGENT_TOKEN, AGENT_USER),
        (Role::Controller, false) => (CONTROLLER_TOKEN, CONTROLLER_USER),
        (Role::All, false) => (ALL_ROLES_TOKEN, CONTROLLER_USER),
    }
}

/// The agent's manifests: its RBAC and the admission policy fencing its VM patches.
pub const AGENT_MANIFESTS: &[&str] = &["rbac.yaml", "admission-policy.yaml"];
/// The same in label mode.
pub const LABEL_MODE_MANIFESTS: &[&str] = &["label-mode/rbac.yaml", "admission-policy.yaml"];

/// Fast phases, and the shipped RBAC and admission policy enforced on the agent's token.
pub fn fast() -> Config {
    Config {
        bookmark_interval: Duration::from_millis(200),
        phase_delay: (Duration::from_millis(20), Duration::from_millis(60)),
        stop_delay: Duration::from_millis(100),
        cleanup_delay: Duration::from_millis(50),
        auth: Some(policy(AGENT_MANIFESTS)),
        ..Config::default()
    }
}

pub async fn sim() -> Handle {
    Server::start_with("127.0.0.1:0".parse().unwrap(), fast())
        .await
        .unwrap()
}

/// A simulated cluster enforcing the label mode's manifests.
pub async fn label_mode_sim() -> Handle {
    Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            auth: Some(policy(LABEL_MODE_MANIFESTS)),
            ..fast()
        },
    )
    .await
    .unwrap()
}

/// The label mode's port-proof key, made in advance as the first agent would make it, so
/// that a test can seed a VM with a port virtbmc wrote.
pub fn seed_port_key(sim: &Handle) -> virtbmc::cluster::port_key::PortKey {
    const KEY: &[u8; 32] = b"label-mode-port-key-for-tests-01";
    sim.seed_secret(
        "virtbmc-system",
        virtbmc::cluster::port_key::SECRET_NAME,
        &[("key", std::str::from_utf8(KEY).unwrap())],
    );
    virtbmc::cluster::port_key::PortKey::new(*KEY)
}

/// The label mode's selector, as the tests' agents use it.
pub const LABEL_SELECTOR: &str = "bmc.kubevirt.io/enabled=true";

/// Labels VM `vm` of [`NS`] with [`LABEL_SELECTOR`].
pub fn select_vm(sim: &Handle, vm: &str) {
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        vm,
        json!({"metadata": {"labels": {"bmc.kubevirt.io/enabled": "true"}}}),
    )
    .unwrap();
}

/// A label-mode agent's options: VMs with [`LABEL_SELECTOR`], the users of the Secret
/// `credentials` (`namespace/name`), ports from `ports`.
pub fn label_mode_options(
    identity: &str,
    credentials: &str,
    ports: RangeInclusive<u16>,
) -> virtbmc::cluster::ClusterOptions {
    let mut opts = virtbmc::cluster::ClusterOptions::new(
        identity,
        "virtbmc-system",
        virtbmc::engine::config::BmcConfig::new(vec![]),
    );
    opts.port_range = ports;
    opts.labels =
        Some(virtbmc::cluster::labeled::LabelMode::new(LABEL_SELECTOR, credentials).unwrap());
    opts
}

/// A client as the agent's: from a kubeconfig holding this bearer token.
pub async fn client_as(sim: &Handle, token: &str) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_as("virtbmc-system", Some(token)))
            .unwrap();
    let mut kc = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    // Injected 5xx must reach the agent, not be retried by the client.
    kc.default_retry = false;
    kube::Client::try_from(kc).unwrap()
}

/// The agent's client: its ServiceAccount's token.
pub async fn client(sim: &Handle) -> kube::Client {
    client_as(sim, AGENT_TOKEN).await
}

/// A kubeconfig file holding the agent's token, for the agent binary (`KUBECONFIG`).
pub fn agent_kubeconfig(sim: &Handle) -> KubeconfigFile {
    kubeconfig_as(sim, AGENT_TOKEN)
}

/// A kubeconfig file holding this token, as a pod's mounted ServiceAccount gives it.
pub fn kubeconfig_as(sim: &Handle, token: &str) -> KubeconfigFile {
    KubeconfigFile::write(&sim.kubeconfig_as("virtbmc-system", Some(token)))
}

/// Fails if the API server refused any request of the agents' or the controller's
/// ServiceAccount.
pub fn assert_agent_never_refused(sim: &Handle) {
    let refused: Vec<_> = sim
        .denials()
        .into_iter()
        .filter(|d| d.user == AGENT_USER || d.user == CONTROLLER_USER)
        .collect();
    assert!(refused.is_empty(), "virtbmc was refused: {refused:#?}");
}

/// A kubeconfig file, removed on drop.
pub struct KubeconfigFile(pub std::path::PathBuf);

impl KubeconfigFile {
    fn write(contents: &str) -> KubeconfigFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "virtbmc-kubeconfig-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&p, contents).unwrap();
        KubeconfigFile(p)
    }
}

impl Drop for KubeconfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One agent in-process: what `virtbmc --kube` runs, bound on 127.0.0.1.
pub struct Agent {
    pub backend: KubeBackend,
    pub registry: Arc<Registry>,
    tasks: Vec<JoinHandle<()>>,
    /// What the API server refused: none may be this process's (checked when it stops).
    audit: kubesim::Audit,
    /// Whom it authenticates as.
    pub user: &'static str,
}

impl Agent {
    pub async fn start(sim: &Handle, identity: &str, ports: RangeInclusive<u16>) -> Agent {
        Agent::start_on(sim, identity, ports, Ipv4Addr::LOCALHOST).await
    }

    /// An agent bound on another loopback address: several agents, as on several nodes.
    pub async fn start_on(
        sim: &Handle,
        identity: &str,
        ports: RangeInclusive<u16>,
        ip: Ipv4Addr,
    ) -> Agent {
        let mut opts = ClusterOptions::new(identity, "virtbmc-system", BmcConfig::new(vec![]));
        opts.port_range = ports;
        Agent::start_with(sim, opts, ip).await
    }

    /// One process of this role (`--role agent|controller|all`), with its own token.
    pub async fn start_role(
        sim: &Handle,
        identity: &str,
        ports: RangeInclusive<u16>,
        role: Role,
    ) -> Agent {
        let mut opts = ClusterOptions::new(identity, "virtbmc-system", BmcConfig::new(vec![]));
        opts.port_range = ports;
        opts.role = role;
        Agent::start_with(sim, opts, Ipv4Addr::LOCALHOST).await
    }

    /// An agent with these options (identity, ports, label mode...), bound on `ip`.
    pub async fn start_with(sim: &Handle, opts: ClusterOptions, ip: Ipv4Addr) -> Agent {
        Agent::start_with_deadline(sim, opts, ip, Duration::from_secs(3)).await
    }

    /// The same, with this action deadline (`--action-timeout-ms`).
    pub async fn start_with_deadline(
        sim: &Handle,
        opts: ClusterOptions,
        ip: Ipv4Addr,
        action_timeout: Duration,
    ) -> Agent {
        Agent::launch(sim, opts, ip, action_timeout).await
    }

    /// An agent on 127.0.0.1 with these identity and ports (every agent serves Redfish, with
    /// a self-signed certificate, on each BMC's port, as the agent does by default).
    pub async fn start_with_redfish(
        sim: &Handle,
        identity: &str,
        ports: RangeInclusive<u16>,
    ) -> Agent {
        let mut opts = ClusterOptions::new(identity, "virtbmc-system", BmcConfig::new(vec![]));
        opts.port_range = ports;
        Agent::launch(sim, opts, Ipv4Addr::LOCALHOST, Duration::from_secs(3)).await
    }

    async fn launch(
        sim: &Handle,
        mut opts: ClusterOptions,
        ip: Ipv4Addr,
        action_timeout: Duration,
    ) -> Agent {
        let _ = env_logger::builder().is_test(true).try_init();
        // Short, so a new agent takes over quickly; long enough that a loaded machine still renews.
        opts.lease_duration = Duration::from_secs(2);
        let metrics = Arc::new(Metrics::default());
        let (token, user) = identity_of(&opts);
        let (backend, writers) =
            KubeBackend::new(client_as(sim, token).await, opts, metrics.clone());
        // Redfish beside IPMI on every BMC port, with a self-signed certificate, as the
        // agent serves by default.
        let tls = virtbmc::redfish::tls::server_config(None, vec![ip.to_string()])
            .expect("self-signed certificate");
        let redfish = Arc::new(virtbmc::redfish::Redfish {
            tls: tokio_rustls::TlsAcceptor::from(tls),
            plain_http: false,
            metrics: metrics.redfish.clone(),
        });
        let registry = Arc::new(
            Registry::new(
                IpAddr::V4(ip),
                Arc::new(backend.clone()),
                metrics,
                action_timeout,
                Arc::new(std::sync::Mutex::new(virtbmc::fastpath::FastPath::off())),
            )
            .with_redfish(redfish),
        );
        let tasks = serve::spawn(&backend, writers, registry.clone());
        Agent {
            backend,
            registry,
            tasks,
            audit: sim.audit(),
            user,
        }
    }

    /// The port the registry serves `ns/vm` on.
    pub fn port_of(&self, name: &str) -> Option<u16> {
        self.registry
            .list()
            .into_iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, p)| p)
    }

    pub async fn wait_served(&self, name: &str) -> u16 {
        let end = tokio::time::Instant::now() + T;
        loop {
            if let Some(p) = self.port_of(name) {
                return p;
            }
            assert!(tokio::time::Instant::now() < end, "{name} never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_power(&self, name: &str, want: &str) {
        let end = tokio::time::Instant::now() + T;
        loop {
            let now = self.backend.shared.view(name).map(|v| v.power.to_string());
            if now.as_deref() == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{name} power is {now:?}, never {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves this agent's admin endpoint (`/readyz`, `/metrics`...) on 127.0.0.1; its address.
    pub async fn serve_admin(&mut self) -> std::net::SocketAddr {
        use virtbmc::agent::admin::Admin;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = Arc::new(Admin {
            metrics: Arc::new(Metrics::default()),
            embedded: virtbmc::backend::embedded::Embedded::new(Duration::ZERO),
            registry: self.registry.clone(),
            fastpath: Arc::new(std::sync::Mutex::new(virtbmc::fastpath::FastPath::off())),
            ready: self.backend.shared.ready.clone(),
        });
        self.tasks.push(tokio::spawn(admin.serve(listener)));
        addr
    }

    pub fn stop(self) {}
}

/// `GET path` over HTTP/1.0: the status line's code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_exchange(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await
}

/// Sends `request` (head and body, as written) over HTTP/1.0 and reads to the end: the
/// status line's code and the body.
pub async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}

/// Someone's `virtctl console` on `vm`'s VMI in [`NS`]: a plain client of the console
/// subresource, with the admin's own credentials.
pub async fn person_console(
    sim: &Handle,
    vm: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://{}/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/{vm}/console",
        sim.addr()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "plain.kubevirt.io".parse().unwrap(),
    );
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.backend.shared.abort_work();
        for (_, p) in self.registry.list() {
            self.registry.remove(p);
        }
        if let Ok(f) = std::env::var("TMP_RBAC_DUMP") {
            use std::io::Write;
            let mut o = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(f)
                .unwrap();
            for g in self.audit.used_grants(self.user) {
                writeln!(o, "{g}").unwrap();
            }
        }
        if !std::thread::panicking() {
            let refused: Vec<_> = self
                .audit
                .denials()
                .into_iter()
                .filter(|d| d.user == self.user)
                .collect();
            assert!(
                refused.is_empty(),
                "{} was refused: {refused:#?}",
                self.user
            );
        }
    }
}

/// A VM, its Secret (admin/password) and its VirtualMachineBMC `<vm>-bmc`.
pub fn seed(sim: &Handle, vm: &str, run_strategy: &str) {
    sim.seed_vm(NS, vm, run_strategy);
    sim.seed_secret(
        NS,
        &format!("{vm}-auth"),
        &[("username", "admin"), ("password", "password")],
    );
    sim.seed_vmbmc(NS, &format!("{vm}-bmc"), vm, &format!("{vm}-auth"));
}

pub fn vmbmc(sim: &Handle, vm: &str) -> Option<Value> {
    sim.get(Kind::VirtualMachineBmc, NS, &format!("{vm}-bmc"))
}

pub fn condition(bmc: &Value, type_: &str) -> Option<String> {
    bmc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

pub fn boot_orders(sim: &Handle, vm: &str) -> Value {
    let v = sim.get(Kind::VirtualMachine, NS, vm).unwrap();
    let d = &v["spec"]["template"]["spec"]["domain"]["devices"];
    json!({
        "disks": d["disks"].as_array().unwrap().iter().map(|x| x["bootOrder"].clone()).collect::<Vec<_>>(),
        "interfaces": d["interfaces"].as_array().unwrap().iter().map(|x| x["bootOrder"].clone()).collect::<Vec<_>>(),
    })
}

pub struct Out {
    pub ok: bool,
    pub text: String,
}

/// Runs `ipmitool -I lanplus -H 127.0.0.1 -p PORT -U user -P password ARGS`.
pub async fn ipmitool(port: u16, user: &str, password: &str, args: &[&str]) -> Out {
    ipmitool_on("lanplus", port, user, password, args).await
}

/// admin/password over lanplus to another loopback address.
pub async fn ipmitool_at(host: &str, port: u16, args: &[&str]) -> Out {
    let mut cmd = std::process::Command::new("ipmitool");
    let port = port.to_string();
    cmd.args([
        "-I", "lanplus", "-H", host, "-p", &port, "-U", "admin", "-P", "password", "-N", "2", "-R",
        "3",
    ]);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("ipmitool is installed");
    Out {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs ipmitool over `interface` (`lan`: IPMI 1.5; `lanplus`: IPMI 2.0 RMCP+).
pub async fn ipmitool_on(
    interface: &str,
    port: u16,
    user: &str,
    password: &str,
    args: &[&str],
) -> Out {
    let mut cmd = std::process::Command::new("ipmitool");
    cmd.args([
        "-I",
        interface,
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-P",
        password,
        "-N",
        "2",
        "-R",
        "3",
    ]);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("ipmitool is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Out {
        ok: out.status.success(),
        text,
    }
}

pub async fn admin(port: u16, args: &[&str]) -> Out {
    ipmitool(port, "admin", "password", args).await
}

/// Until `power status` succeeds with these credentials: each cache fills on its own, so a
/// BMC can be served a moment before its Secret reaches the agent (no users until then).
pub async fn until_login(port: u16, user: &str, password: &str) {
    let end = tokio::time::Instant::now() + T;
    while !ipmitool(port, user, password, &["power", "status"])
        .await
        .ok
    {
        assert!(
            tokio::time::Instant::now() < end,
            "{user} never let in on port {port}"
        );
    }
}

pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ipmitool ... shell` as admin/password on 127.0.0.1: one session held across commands.
pub struct Shell {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Shell {
    pub fn open(interface: &str, port: u16) -> Shell {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ipmitool")
            .args(["-I", interface, "-H", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-U", "admin", "-P", "password", "-N", "1", "-R", "2", "shell",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ipmitool is installed");
        let (tx, lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(l);
                }
            });
        }
        Shell { child, lines }
    }

    /// Sends `cmd` and returns every line printed until one contains `want` (Ok) or until
    /// ten seconds pass with none (Err with what was printed).
    pub fn run(&mut self, cmd: &str, want: &str) -> Result<(), Vec<String>> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return Ok(()),
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        Err(seen)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
