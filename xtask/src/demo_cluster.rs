//! `cargo xtask demo cluster`: the agent in cluster mode against the simulated cluster.
//!
//! In namespace `virtbmc-demo`: kubesim (the test API server with its simulated
//! virt-controller) on the namespace's loopback, with three VirtualMachines of different
//! runStrategies, each with a Secret (admin/password) and a VirtualMachineBMC, and a Pod that
//! stands for the agent; the controller (`--role controller`) and the agent (`--role agent`),
//! each with a kubeconfig holding its own ServiceAccount's token (the shipped RBAC and
//! admission policy enforced), the agent serving the BMCs on the veth's address with XDP
//! attached to it. From `virtbmc-demo-client`, real ipmitool commands against the ports the
//! controller wrote into the BMCs' status; between them, views of the cluster read from
//! kubesim's API with curl (no kubectl needed): VMs, VMIs and their phases, BMCs, Services
//! and their EndpointSlices, the Lease, Events. A Serial-over-LAN session on one VM shows its
//! guest through KubeVirt's console subresource, across a reset.
//! Then the fast path's counters and map, as in the embedded demo. The processes, namespaces
//! and pins go at the end, on failure and on Ctrl-C.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtbmc_e2e::{NetnsPair, Out};

use crate::demo::{
    ADMIN, BMC_IFACE, BMC_NS, CLIENT_NS, NET, PIN_DIR, Steps, print_log_tails, show_fast_path,
};
use crate::json::Json;
use crate::{interrupt, tools};

/// kubesim's address, on the loopback of namespace `virtbmc-demo`.
const API: &str = "http://127.0.0.1:18401";
/// The agent hands out BMC ports from here: the embedded demo's ports.
const PORTS: &str = "6230-6239";
/// One VM per runStrategy: kubesim takes the list in turn for vm-1, vm-2, vm-3. Always and
/// Once start their VM at once; Once refuses restarts.
const STRATEGIES: &str = "Halted,Always,Once";
const VMS: usize = 3;
/// The agent's ServiceAccount, as manifests/rbac.yaml binds it, and its bearer token.
const AGENT_USER: &str = "system:serviceaccount:virtbmc-system:virtbmc";
const AGENT_TOKEN: &str = "demo-agent";
/// The controller's ServiceAccount and its bearer token.
const CONTROLLER_USER: &str = "system:serviceaccount:virtbmc-system:virtbmc-controller";
const CONTROLLER_TOKEN: &str = "demo-controller";
/// The controller's admin endpoint (the agent's is [`ADMIN`]).
const CONTROLLER_ADMIN: &str = "127.0.0.1:9624";
/// A cluster-admin token: the views below read the cluster with it.
const ADMIN_TOKEN: &str = "demo-admin";
/// The agent's namespace: its Lease and its Pod.
const AGENT_NS: &str = "virtbmc-system";
/// Upper bound for anything the cluster does on its own (allocation, a VMI's phases).
const SETTLE: Duration = Duration::from_secs(30);

pub fn run() -> Result<(), String> {
    let (agent, object) = crate::demo::prepare()?;
    let kubesim = tools::build_release("kubesim")?;
    interrupt::check()?;

    // Dropped last: after both processes are stopped, the namespaces go.
    let net = NetnsPair::create_named(BMC_NS, CLIENT_NS, NET);
    let bmc_ip = net.bmc_ip.to_string();
    let seed = TempFile::new("seed.json");
    std::fs::write(&seed.0, agent_pod(&bmc_ip))
        .map_err(|e| format!("{}: {e}", seed.0.display()))?;
    let seed_arg = seed.0.to_str().ok_or("temporary folder is not UTF-8")?;
    // What the pods' mounted ServiceAccount tokens give a real agent and controller.
    let kubeconfig = kubeconfig_with("kubeconfig", AGENT_TOKEN)?;
    let kubeconfig_arg = kubeconfig
        .0
        .to_str()
        .ok_or("temporary folder is not UTF-8")?;
    let controller_kubeconfig = kubeconfig_with("controller-kubeconfig", CONTROLLER_TOKEN)?;
    let controller_kubeconfig_arg = controller_kubeconfig
        .0
        .to_str()
        .ok_or("temporary folder is not UTF-8")?;
    let manifests = crate::ebpf::workspace_root().join("manifests");
    let rbac = manifests.join("rbac.yaml");
    let policy = manifests.join("admission-policy.yaml");
    let agent_token = format!("{AGENT_TOKEN}={AGENT_USER}");
    let controller_token = format!("{CONTROLLER_TOKEN}={CONTROLLER_USER}");
    let admin_token = format!("{ADMIN_TOKEN}=kubernetes-admin,system:masters");
    let vms = VMS.to_string();
    let sim = Daemon::start(
        "kubesim",
        &kubesim,
        &[
            "--listen",
            API.trim_start_matches("http://"),
            "--vms",
            &vms,
            "--run-strategy",
            STRATEGIES,
            "--with-bmcs",
            "--seed",
            seed_arg,
            "--phase-delay-ms",
            "300-700",
            "--stop-delay-ms",
            "1000",
            "--token",
            &agent_token,
            "--token",
            &controller_token,
            "--token",
            &admin_token,
            "--rbac",
            rbac.to_str().ok_or("manifests path is not UTF-8")?,
            "--rbac",
            policy.to_str().ok_or("manifests path is not UTF-8")?,
        ],
        &[],
    )?;
    let object = object.to_str().ok_or("object path is not UTF-8")?;
    let controller = Daemon::start(
        "controller",
        &agent,
        &[
            "--kube",
            "--role",
            "controller",
            "--port-range",
            PORTS,
            "--identity",
            "virtbmc-controller-0",
            "--admin",
            CONTROLLER_ADMIN,
        ],
        &[("KUBECONFIG", controller_kubeconfig_arg)],
    )?;
    let agent = Daemon::start(
        "agent",
        &agent,
        &[
            "--kube",
            "--role",
            "agent",
            "--listen",
            &bmc_ip,
            "--node-name",
            "node1",
            "--admin",
            ADMIN,
            "--xdp-iface",
            BMC_IFACE,
            "--ebpf-object",
            object,
            "--bpf-pin-dir",
            PIN_DIR,
        ],
        &[("KUBECONFIG", kubeconfig_arg)],
    )?;
    let mut demo = Demo {
        agent,
        controller,
        sim,
        _seed: seed,
        _kubeconfig: [kubeconfig, controller_kubeconfig],
        bmc_ip,
        ports: Vec::new(),
        steps: Steps::default(),
    };
    let result = demo.script();
    let logs = [
        ("agent", demo.agent.log()),
        ("controller", demo.controller.log()),
        ("kubesim", demo.sim.log()),
    ];
    let result = match result {
        Ok(()) => std::mem::take(&mut demo.steps).finish(&logs),
        Err(e) => {
            // A failure, unless it was Ctrl-C: the logs say why.
            if interrupt::check().is_ok() {
                print_log_tails(&logs);
            }
            Err(e)
        }
    };
    println!(
        "\n==> tearing down: agent, controller and kubesim stopped, namespaces {BMC_NS} and {CLIENT_NS} deleted"
    );
    // The agent (detaching XDP, unpinning its maps), then kubesim, then the namespaces.
    drop(demo);
    drop(net);
    result
}

/// A kubeconfig for kubesim holding this bearer token, its namespace the agent's.
fn kubeconfig_with(name: &str, token: &str) -> Result<TempFile, String> {
    let file = TempFile::new(name);
    std::fs::write(
        &file.0,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {API}\n\
             users:\n- name: virtbmc\n  user:\n    token: {token}\ncontexts:\n- name: virtbmc\n  \
             context:\n    cluster: kubesim\n    user: virtbmc\n    namespace: {AGENT_NS}\n\
             current-context: virtbmc\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", file.0.display()))?;
    Ok(file)
}

/// A file of the demo in the temporary folder (`virtbmc-demo-<name>`), removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("{BMC_NS}-{name}")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The Pod that stands for the agent (a process here, a DaemonSet's pod in a real cluster),
/// so that the leader gives each BMC Service an EndpointSlice with the agent's address. Its
/// label is the agent's default `--agent-selector`; kubesim applies `status` after creating it.
fn agent_pod(ip: &str) -> String {
    format!(
        r#"[{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "virtbmc-node1", "namespace": "{AGENT_NS}",
               "labels": {{"app.kubernetes.io/name": "virtbmc"}}}},
  "spec": {{"nodeName": "node1", "containers": [{{"name": "virtbmc", "image": "virtbmc"}}]}},
  "status": {{"phase": "Running", "podIP": "{ip}", "podIPs": [{{"ip": "{ip}"}}],
             "conditions": [{{"type": "Ready", "status": "True"}}]}}}}]"#
    )
}

/// kubesim or the agent, run in namespace `virtbmc-demo` with its output in a log file.
/// Dropping it stops it with SIGTERM (the agent then shuts down cleanly), SIGKILL if it lingers.
struct Daemon {
    name: &'static str,
    child: Child,
    cmdline: String,
    log: TempFile,
}

impl Daemon {
    fn start(
        name: &'static str,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        let log = TempFile::new(&format!("{name}.log"));
        let file = File::create(&log.0).map_err(|e| format!("{}: {e}", log.0.display()))?;
        let bin = bin.to_str().ok_or("binary path is not UTF-8")?;
        let argv: Vec<&str> = std::iter::once(bin).chain(args.iter().copied()).collect();
        let mut cmd = NetnsPair::exec(BMC_NS, &argv);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            // Its own process group: a Ctrl-C reaches only us, and we stop the daemons in
            // order (the agent needs kubesim to release its Lease).
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let cmdline = format!("ip netns exec {BMC_NS} {}", argv.join(" "));
        let child = cmd.spawn().map_err(|e| format!("{cmdline}: {e}"))?;
        Ok(Daemon {
            name,
            child,
            cmdline,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    /// Err when it has exited (the caller prints the end of its log).
    fn check_alive(&mut self) -> Result<(), String> {
        let status = match self.child.try_wait() {
            Ok(None) => return Ok(()),
            Ok(Some(status)) => status.to_string(),
            Err(e) => e.to_string(),
        };
        Err(format!("{} exited ({status}): {}", self.name, self.cmdline))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The log goes with `self.log`.
    }
}

/// `GET url` from inside namespace `virtbmc-demo` (kubesim and the admin endpoint live on
/// its loopback).
fn curl(url: &str) -> Result<String, String> {
    NetnsPair::curl(BMC_NS, url)
}

/// `GET path` of kubesim's API as the cluster admin.
fn api_get(path: &str) -> Result<String, String> {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    NetnsPair::curl_with(BMC_NS, &format!("{API}{path}"), &[&auth])
}

/// The objects of a list path of kubesim's API.
fn list(path: &str) -> Result<Vec<Json>, String> {
    let body = api_get(path)?;
    Ok(Json::parse(&body)?.at("items").items().to_vec())
}

/// How a column reads its cell from an object.
enum Cell {
    /// The value at a dotted path.
    At(&'static str),
    /// The status of the condition of this type.
    Condition(&'static str),
    /// Computed.
    With(fn(&Json) -> String),
}

/// A view of one resource (in namespace `default`, where kubesim puts the VMs, or the agent's
/// namespace for its Pod and Lease): the list
/// path and the columns printed, as `kubectl get` would.
struct View {
    path: &'static str,
    columns: &'static [(&'static str, Cell)],
}

const VMS_VIEW: View = View {
    path: "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("RUNSTRATEGY", Cell::At("spec.runStrategy")),
        ("STATUS", Cell::At("status.printableStatus")),
        ("BOOT ORDER", Cell::With(boot_order)),
    ],
};

const VMIS_VIEW: View = View {
    path: "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("PHASE", Cell::At("status.phase")),
        ("NODE", Cell::At("status.nodeName")),
        ("UID", Cell::At("metadata.uid")),
    ],
};

const BMCS_VIEW: View = View {
    path: "/apis/bmc.kubevirt.io/v1beta1/namespaces/default/virtualmachinebmcs",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("VM", Cell::At("spec.virtualMachineRef.name")),
        ("PORT", Cell::At("status.port")),
        ("CLUSTER-IP", Cell::At("status.clusterIP")),
        ("READY", Cell::Condition("Ready")),
        ("VM-AVAILABLE", Cell::Condition("VirtualMachineAvailable")),
        ("SECRET-AVAILABLE", Cell::Condition("SecretAvailable")),
        ("BOOT OVERRIDE", Cell::At("status.bootOverride")),
    ],
};

const SERVICES_VIEW: View = View {
    path: "/api/v1/namespaces/default/services",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("CLUSTER-IP", Cell::At("spec.clusterIP")),
        (
            "PORT",
            Cell::With(|o| {
                let p = o.at("spec.ports.0");
                let [port, proto, target] =
                    ["port", "protocol", "targetPort"].map(|k| p.at(k).text());
                format!("{port}/{proto} -> {target}")
            }),
        ),
    ],
};

const SLICES_VIEW: View = View {
    path: "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        (
            "SERVICE",
            Cell::With(|o| o.at("metadata.labels").get(SERVICE_NAME).text()),
        ),
        ("ADDRESSTYPE", Cell::At("addressType")),
        (
            "PORTS",
            Cell::With(|o| join(o.at("ports"), |p| p.at("port"))),
        ),
        (
            "ENDPOINTS",
            Cell::With(|o| join(o.at("endpoints"), |e| e.at("addresses.0"))),
        ),
    ],
};

const PODS_VIEW: View = View {
    path: "/api/v1/namespaces/virtbmc-system/pods",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("PHASE", Cell::At("status.phase")),
        ("IP", Cell::At("status.podIP")),
        ("NODE", Cell::At("spec.nodeName")),
        ("READY", Cell::Condition("Ready")),
    ],
};

const LEASES_VIEW: View = View {
    path: "/apis/coordination.k8s.io/v1/namespaces/virtbmc-system/leases",
    columns: &[
        ("NAME", Cell::At("metadata.name")),
        ("HOLDER", Cell::At("spec.holderIdentity")),
        ("DURATION", Cell::At("spec.leaseDurationSeconds")),
    ],
};

const EVENTS_VIEW: View = View {
    path: "/api/v1/namespaces/default/events",
    columns: &[
        ("TYPE", Cell::At("type")),
        ("REASON", Cell::At("reason")),
        (
            "OBJECT",
            Cell::With(|o| {
                let r = o.at("involvedObject");
                format!("{}/{}", r.at("kind").text(), r.at("name").text()).to_lowercase()
            }),
        ),
        ("FROM", Cell::At("source.component")),
        ("COUNT", Cell::At("count")),
        ("MESSAGE", Cell::At("message")),
    ],
};

impl Cell {
    fn read(&self, o: &Json) -> String {
        match self {
            Cell::At(path) => o.at(path).text(),
            Cell::Condition(kind) => condition(o, kind),
            Cell::With(f) => f(o),
        }
    }
}

/// The label of an EndpointSlice that names its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One cell per element of an array, comma-separated.
fn join(array: &Json, cell: fn(&Json) -> &Json) -> String {
    let cells: Vec<String> = array.items().iter().map(|e| cell(e).text()).collect();
    if cells.is_empty() {
        "<none>".into()
    } else {
        cells.join(",")
    }
}

/// The status of a condition of `status.conditions`, `<none>` without it.
fn condition(o: &Json, kind: &str) -> String {
    o.at("status.conditions")
        .items()
        .iter()
        .find(|c| c.at("type").text() == kind)
        .map_or_else(|| "<none>".into(), |c| c.at("status").text())
}

/// The VM's boot devices by bootOrder: `rootdisk:1` boots from disk, `default:1 rootdisk:2`
/// from the network (the interface `default` first).
fn boot_order(vm: &Json) -> String {
    let devices = vm.at("spec.template.spec.domain.devices");
    let mut order: Vec<(u32, String)> = ["disks", "interfaces"]
        .iter()
        .flat_map(|class| devices.at(class).items())
        .filter_map(|d| {
            let n = d.at("bootOrder").text().parse().ok()?;
            Some((n, d.at("name").text()))
        })
        .collect();
    order.sort();
    let shown: Vec<String> = order.iter().map(|(n, d)| format!("{d}:{n}")).collect();
    if shown.is_empty() {
        "<none>".into()
    } else {
        shown.join(" ")
    }
}

/// Prints the view's rows as an aligned table, and the request it came from.
fn show(view: &View) {
    println!(
        "$ curl -s -H 'Authorization: Bearer {ADMIN_TOKEN}' {API}{}   (in namespace {BMC_NS}; as a table)",
        view.path
    );
    let items = match list(view.path) {
        Ok(items) => items,
        Err(e) => return println!("{e}"),
    };
    if items.is_empty() {
        return println!("(none)");
    }
    let rows: Vec<Vec<String>> = std::iter::once(view.columns.iter().map(|c| c.0.into()).collect())
        .chain(
            items
                .iter()
                .map(|o| view.columns.iter().map(|c| c.1.read(o)).collect()),
        )
        .collect();
    let widths: Vec<usize> = (0..view.columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

struct Demo {
    /// Dropped (stopped) before kubesim, then the controller, which releases its Lease while
    /// kubesim answers.
    agent: Daemon,
    controller: Daemon,
    sim: Daemon,
    _seed: TempFile,
    _kubeconfig: [TempFile; 2],
    bmc_ip: String,
    /// VM name -> the BMC port the elected controller wrote into its VirtualMachineBMC.
    ports: Vec<(String, u16)>,
    steps: Steps,
}

impl Demo {
    fn say(&self, text: &str) {
        self.steps.say(text);
    }

    /// Polls `probe` every 100 ms until it returns Some, while every process runs.
    fn wait<T>(
        &mut self,
        limit: Duration,
        mut probe: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<Option<T>, String> {
        let start = Instant::now();
        loop {
            interrupt::check()?;
            self.sim.check_alive()?;
            self.agent.check_alive()?;
            self.controller.check_alive()?;
            if let Some(v) = probe()? {
                return Ok(Some(v));
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every VirtualMachineBMC has a port, Ready=True and an EndpointSlice with the
    /// agent in it, and the VMs that their runStrategy starts are Running; keeps the ports.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let ready = self.wait(SETTLE, || {
            // Until kubesim listens, curl fails: not yet.
            let Ok(bmcs) = list(BMCS_VIEW.path) else {
                return Ok(None);
            };
            let ports: Vec<(String, u16)> = bmcs
                .iter()
                .filter(|b| condition(b, "Ready") == "True")
                .filter_map(|b| {
                    let port = b.at("status.port").text().parse().ok()?;
                    Some((b.at("spec.virtualMachineRef.name").text(), port))
                })
                .collect();
            let vmis = list(VMIS_VIEW.path)?;
            let running = |vm: &Json| {
                vmis.iter().any(|i| {
                    i.at("metadata.name") == vm.at("metadata.name")
                        && i.at("status.phase").text() == "Running"
                })
            };
            let settled = list(VMS_VIEW.path)?
                .iter()
                .filter(|vm| matches!(vm.at("spec.runStrategy").text().as_str(), "Always" | "Once"))
                .all(running);
            let routed = list(SLICES_VIEW.path)?
                .iter()
                .filter(|e| !e.at("endpoints").items().is_empty())
                .count();
            Ok((ports.len() == VMS && settled && routed == VMS).then_some(ports))
        })?;
        self.ports = ready.ok_or("the VirtualMachineBMCs never all got a port and Ready=True")?;
        self.ports.sort();
        println!(
            "every VirtualMachineBMC has its port, Service, EndpointSlice and Ready=True, the VMs of runStrategy Always and Once run: after {:.1}s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn port(&self, vm: &str) -> u16 {
        self.ports
            .iter()
            .find(|(name, _)| name == vm)
            .map_or(0, |(_, p)| *p)
    }

    /// Runs and prints `ipmitool -I <iface>` as admin against the BMC of `vm`, from the client
    /// namespace; `expect_ok` records a surprise when it differs.
    fn ipmitool(
        &mut self,
        iface: &str,
        vm: &str,
        args: &[&str],
        expect_ok: bool,
    ) -> Result<Out, String> {
        interrupt::check()?;
        let port = self.port(vm).to_string();
        let mut argv = vec!["ipmitool", "-I", iface, "-U", "admin", "-P", "password"];
        argv.extend(["-H", &self.bmc_ip, "-p", &port]);
        argv.extend_from_slice(args);
        let cmdline = argv.join(" ");
        // `timeout --foreground` bounds a hung client and keeps it in our process group, so a
        // Ctrl-C reaches it too.
        let mut timed = vec!["timeout", "--foreground", "60"];
        timed.extend(argv);
        let start = Instant::now();
        let out = NetnsPair::exec(CLIENT_NS, &timed)
            .output()
            .map_err(|e| format!("{cmdline}: {e}"))?;
        let out = Out {
            cmdline,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        };
        self.steps.client(out, expect_ok)
    }

    /// The VMI of `vm` as (phase, uid), None while there is none.
    fn vmi(vm: &str) -> Result<Option<(String, String)>, String> {
        Ok(list(VMIS_VIEW.path)?
            .iter()
            .find(|o| o.at("metadata.name").text() == vm)
            .map(|o| (o.at("status.phase").text(), o.at("metadata.uid").text())))
    }

    /// Prints every change of the VMI of `vm` until `done` holds for it; a surprise if it
    /// does not within [`SETTLE`] (`what`: what `done` means).
    fn follow_vmi(
        &mut self,
        vm: &str,
        what: &str,
        done: impl Fn(Option<&(String, String)>) -> bool,
    ) -> Result<(), String> {
        println!(
            "(following VMI {vm} in {API}{}: phase, uid)",
            VMIS_VIEW.path
        );
        let start = Instant::now();
        let mut last: Option<Option<(String, String)>> = None;
        self.expect(&format!("VMI {vm} {what}"), SETTLE, || {
            let now = Self::vmi(vm)?;
            if last.as_ref() != Some(&now) {
                let t = start.elapsed().as_secs_f64();
                match &now {
                    Some((phase, uid)) => println!("  {t:4.1}s  {vm}: {phase:<10} uid {uid}"),
                    None => println!("  {t:4.1}s  {vm}: no VMI"),
                }
                last = Some(now.clone());
            }
            Ok(done(now.as_ref()))
        })
    }

    /// Waits for `cond`; a surprise when it does not hold within `limit`.
    fn expect(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        if self.wait(limit, || Ok(cond()?.then_some(())))?.is_none() {
            self.steps.surprise(format!("{what}: not within {limit:?}"));
        }
        Ok(())
    }

    /// Follows the VMI of `vm` until a new one (another uid than `old`) is Running.
    fn follow_new_vmi(&mut self, vm: &str, old: Option<String>) -> Result<(), String> {
        self.follow_vmi(vm, "Running again with a new uid", |now| {
            now.is_some_and(|(phase, uid)| phase == "Running" && Some(uid) != old.as_ref())
        })
    }

    /// A SOL session on `vm` across a power reset, its terminal shown as the user saw it.
    fn sol_across_a_reset(&mut self, vm: &str) -> Result<(), String> {
        interrupt::check()?;
        let port = self.port(vm).to_string();
        let argv = [
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            &self.bmc_ip,
            "-p",
            &port,
            "-U",
            "admin",
            "-P",
            "password",
            "sol",
            "activate",
        ];
        println!("$ {}", argv.join(" "));
        let mut t = virtbmc_e2e::terminal::start(&argv, |line| NetnsPair::exec(CLIENT_NS, line));
        let wait = Duration::from_secs(15);
        let prompt = format!("{vm} login: ");
        for (typed, want) in [
            ("", "[SOL Session operational"),
            ("\r", prompt.as_str()),
            ("root\r", prompt.as_str()),
        ] {
            if !typed.is_empty() {
                t.send(typed);
            }
            if t.try_expect(want, wait).is_err() {
                println!("{}", t.transcript().replace('\r', ""));
                self.steps
                    .surprise(format!("SOL: no {want:?} after typing {typed:?}"));
                return Ok(());
            }
        }
        let old = Self::uid(vm)?;
        let reset = self.ipmitool("lan", vm, &["power", "reset"], true)?;
        self.follow_new_vmi(vm, old)?;
        let new = Self::uid(vm)?.unwrap_or_default();
        if t.try_expect(&format!("instance {new}"), wait).is_err()
            || t.try_expect(&prompt, wait).is_err()
        {
            self.steps.surprise(format!(
                "SOL: no boot output of the new VMI (uid {new}) after the reset"
            ));
        }
        t.send("\r~.");
        let exited = t.try_expect("[terminated ipmitool]", wait).is_ok();
        println!("(the SOL terminal, as the user saw it:)");
        println!("{}", t.transcript().replace('\r', ""));
        println!(
            "(power reset from another client: {})",
            if reset.ok() { "ok" } else { "failed" }
        );
        if !exited {
            self.steps
                .surprise("SOL: ipmitool did not end on ~.".into());
        }
        Ok(())
    }

    fn uid(vm: &str) -> Result<Option<String>, String> {
        Ok(Self::vmi(vm)?.map(|(_, uid)| uid))
    }

    fn script(&mut self) -> Result<(), String> {
        println!(
            "\n==> virtbmc cluster demo: one agent serves every VirtualMachineBMC of a simulated KubeVirt cluster, a controller gives them ports and Services"
        );
        println!("kubesim: {}", self.sim.cmdline);
        println!("controller: {}", self.controller.cmdline);
        println!("agent:   {}", self.agent.cmdline);
        println!(
            "logs: {} {} {}",
            self.sim.log.0.display(),
            self.controller.log.0.display(),
            self.agent.log.0.display()
        );
        println!(
            "clients run in namespace {CLIENT_NS}; the agent's address is {}",
            self.bmc_ip
        );
        self.wait_ready()?;

        self.say(&format!(
            "the cluster: {VMS} VMs (runStrategy {STRATEGIES}), each with a Secret <vm>-bmc-auth (admin/password) and a VirtualMachineBMC"
        ));
        show(&VMS_VIEW);
        show(&VMIS_VIEW);
        self.say("the agent's Pod: a process here, it stands for the DaemonSet's pod on node1 (IP: the agent's address in the namespace)");
        show(&PODS_VIEW);
        self.say("what the elected controller wrote: a port per BMC, the Service <vm>-virtbmc (UDP 623 and TCP 443 -> that port) and its EndpointSlice (the agent pods), the conditions; and the Lease it holds");
        show(&BMCS_VIEW);
        show(&SERVICES_VIEW);
        show(&SLICES_VIEW);
        show(&LEASES_VIEW);

        let (p1, p2, p3) = (self.port("vm-1"), self.port("vm-2"), self.port("vm-3"));
        self.say(&format!(
            "vm-1 (Halted) on port {p1}, over IPMI 1.5 (ipmitool -I lan): off, no VMI"
        ));
        self.ipmitool("lan", "vm-1", &["power", "status"], true)?;
        self.say("power on over IPMI 2.0 (-I lanplus): the agent calls KubeVirt's start, the simulated virt-controller moves the new VMI through its phases");
        self.ipmitool("lanplus", "vm-1", &["power", "on"], true)?;
        self.follow_vmi("vm-1", "Running", |now| {
            now.is_some_and(|(phase, _)| phase == "Running")
        })?;
        self.ipmitool("lanplus", "vm-1", &["power", "status"], true)?;
        self.ipmitool("lan", "vm-1", &["power", "status"], true)?;

        self.say(&format!(
            "vm-2 (Always) on port {p2}: the cluster started it"
        ));
        self.ipmitool("lanplus", "vm-2", &["power", "status"], true)?;

        self.say("boot device: PXE for vm-1's next boot: the one-shot override is recorded in the BMC's status, then its boot orders change by a guarded JSON Patch");
        self.ipmitool("lanplus", "vm-1", &["chassis", "bootdev", "pxe"], true)?;
        self.ipmitool(
            "lanplus",
            "vm-1",
            &["chassis", "bootparam", "get", "5"],
            true,
        )?;
        show(&VMS_VIEW);
        show(&BMCS_VIEW);

        self.say("power cycle of vm-1: KubeVirt's restart; a new VMI (new uid) boots from the network, then the agent undoes the one-shot override");
        let old = Self::uid("vm-1")?;
        self.ipmitool("lanplus", "vm-1", &["power", "cycle"], true)?;
        self.follow_new_vmi("vm-1", old)?;
        // The agent undoes a one-shot override once the VM has started with it.
        self.expect("vm-1's one-shot boot override undone", SETTLE, || {
            Ok(list(BMCS_VIEW.path)?.iter().any(|b| {
                b.at("spec.virtualMachineRef.name").text() == "vm-1"
                    && b.at("status.bootOverride") == &Json::Null
            }))
        })?;
        show(&VMS_VIEW);
        self.ipmitool(
            "lanplus",
            "vm-1",
            &["chassis", "bootparam", "get", "5"],
            true,
        )?;

        self.say("Serial-over-LAN on vm-2: `ipmitool -I lanplus sol activate` (under a terminal) reads the VMI's console subresource through the agent; Enter, a login name, then a power reset of vm-2 from another client over IPMI 1.5 (KubeVirt's restart with grace period 0): the new VMI's boot shows on the same SOL session; then ~.");
        self.sol_across_a_reset("vm-2")?;

        self.say("power off of vm-1 over IPMI 1.5: KubeVirt's stop; the guest shuts down and its VMI goes");
        self.ipmitool("lan", "vm-1", &["power", "off"], true)?;
        self.follow_vmi("vm-1", "gone", |now| now.is_none())?;
        self.ipmitool("lan", "vm-1", &["power", "status"], true)?;

        self.say(&format!(
            "vm-3 (Once) on port {p3} ran from the start, and KubeVirt refuses restarts under runStrategy Once: ipmitool gets a completion code, the VM a Warning Event"
        ));
        self.ipmitool("lanplus", "vm-3", &["power", "status"], true)?;
        self.ipmitool("lanplus", "vm-3", &["power", "reset"], false)?;
        // Events are written in the background.
        self.expect("a Warning Event on vm-3", Duration::from_secs(5), || {
            Ok(list(EVENTS_VIEW.path)?
                .iter()
                .any(|e| e.at("involvedObject.name").text() == "vm-3"))
        })?;
        show(&EVENTS_VIEW);

        self.say("the cluster at the end");
        show(&VMS_VIEW);
        show(&VMIS_VIEW);

        self.say("what the XDP fast path answered itself (pings, auth capabilities, cipher suites, the IPMI 1.5 in-session power status), and its map of the BMCs the cluster gave the agent");
        show_fast_path(
            |path| curl(&format!("http://{ADMIN}{path}")),
            self.agent.child.id(),
        );
        Ok(())
    }
}
