//! The container image: built from the `Containerfile` with podman (as `cargo xtask image`
//! does, into a store of the test's own), its root file system read back file by file (the
//! agent, the XDP object, the loader and libraries the agent links, nothing else: no shell),
//! then the agent run FROM that root file system as the DaemonSet's pod would run it:
//! chrooted into it mounted read-only, with the image's entrypoint and environment only (so
//! the XDP object comes from the path the image names), /proc and a read-only /sys mounted,
//! the node's bpffs folder bound where the DaemonSet mounts it, and only the pod's three
//! capabilities. It serves a simulated cluster (kubesim, in the same network namespace)
//! in cluster mode with XDP attached to its veth, and real ipmitool reads each VM's state
//! back and powers one on. Needs root, podman, the release agent, kubesim and the object.

mod xdp_support;

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtbmc_e2e::NetnsPair;
use virtbmc_e2e::image::{self, Podman};

/// kubesim on the loopback of the agent's namespace.
const API: &str = "127.0.0.1:18402";
/// The agent's admin endpoint, on the same loopback.
const ADMIN: &str = "127.0.0.1:9623";
const PORTS: &str = "6230-6231";
/// Where the DaemonSet mounts the node's bpffs folder in the pod.
const POD_PIN_DIR: &str = "run/virtbmc/bpf";
/// The capabilities the DaemonSet adds after dropping ALL: CAP_NET_ADMIN (12), CAP_PERFMON
/// (38), CAP_BPF (39).
const POD_CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);
/// Anything the cluster does on its own (ports, a VMI's phases), with margin for a busy
/// two-core machine.
const SETTLE: Duration = Duration::from_secs(30);

const BMCS: &str = "/apis/bmc.kubevirt.io/v1beta1/namespaces/default/virtualmachinebmcs";
const VMIS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

/// kubesim's release binary: `$VIRTBMC_KUBESIM_BIN`, else next to the agent's.
fn kubesim_binary() -> PathBuf {
    std::env::var_os("VIRTBMC_KUBESIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| virtbmc_e2e::agent_binary().with_file_name("kubesim"))
}

/// A folder of this test (build context, podman store, root file system, logs), removed on
/// drop: podman's mounts of the image first, then anything still mounted below it, then the
/// folder.
struct Scratch {
    dir: PathBuf,
    podman: Podman,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("virtbmc-e2e-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let podman = Podman::private(&dir.join("store"));
        Scratch { dir, podman }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.podman.run(&["image", "unmount", "--all", "--force"]);
        let prefix = self.dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Deepest first.
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &below {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// A folder on the host's bpffs for the agent's pins (the node's `/sys/fs/bpf/virtbmc`),
/// removed on drop with whatever the agent left in it.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// kubesim or the agent with its output in a log file. Dropping it stops it with SIGTERM
/// (the agent detaches XDP and removes its pins), SIGKILL if it lingers; when the test is
/// failing, the end of its log is printed.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Daemon {
        let file = File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Daemon { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    #[track_caller]
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- end of {} log ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Fails the child before exec with the OS error when a set-up call returns -1.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `entrypoint args` run as a container runtime would run the image for the DaemonSet: in
/// network namespace `netns`, in a mount namespace of its own (gone with the process) where
/// `rootfs` is mounted read-only with /proc, a read-only /sys and the pin folder in it,
/// chrooted there, with only `env` and only the pod's capabilities.
fn jailed(
    rootfs: &Path,
    netns: &str,
    pins: &Path,
    entrypoint: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Command {
    let ns = c_path(&Path::new("/run/netns").join(netns));
    let root = c_path(rootfs);
    let proc_dir = c_path(&rootfs.join("proc"));
    let sys_dir = c_path(&rootfs.join("sys"));
    let pin_src = c_path(pins);
    let pin_dst = c_path(&rootfs.join(POD_PIN_DIR));
    let mut cmd = Command::new(entrypoint);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    let pre_exec = move || -> std::io::Result<()> {
        // SAFETY: only system calls on C strings made before the fork (async-signal-safe).
        unsafe {
            let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            check(fd)?;
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted from here on reaches the host's mount table.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // readOnlyRootFilesystem: the image's files, read-only, as the root.
            check(libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"proc".as_ptr(),
                proc_dir.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            // A fresh sysfs shows this network namespace's devices, as in a pod.
            check(libc::mount(
                c"sysfs".as_ptr(),
                sys_dir.as_ptr(),
                c"sysfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                pin_src.as_ptr(),
                pin_dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            // The DaemonSet's securityContext: root with only POD_CAPS (a root exec gets its
            // bounding set as its capabilities), allowPrivilegeEscalation: false.
            for cap in 0..64 {
                if POD_CAPS & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) == -1
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    };
    // SAFETY: the closure only makes system calls (see above).
    unsafe { cmd.pre_exec(pre_exec) };
    cmd
}

/// Every entry below `root` as (path inside the image, kind), sorted.
fn walk(root: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            let inside = Path::new("/").join(e.path().strip_prefix(root).unwrap());
            let kind = if meta.is_dir() {
                todo.push(e.path());
                "dir"
            } else if meta.is_file() {
                "file"
            } else if meta.file_type().is_symlink() {
                "symlink"
            } else {
                "other"
            };
            out.push((inside, kind));
        }
    }
    out.sort();
    out
}

/// The one `"port":N` of a VirtualMachineBMC (its status; the spec has none).
fn status_port(body: &str) -> Option<u16> {
    let mut found = body.match_indices("\"port\":").map(|(i, k)| {
        body[i + k.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    let first = found.next()?;
    assert!(found.next().is_none(), "two ports in {body}");
    first.parse().ok()
}

fn kubesim_get(net: &NetnsPair, path: &str) -> Result<String, String> {
    NetnsPair::curl(&net.bmc, &format!("http://{API}{path}"))
}

fn vmi_running(net: &NetnsPair, vm: &str) -> bool {
    kubesim_get(net, &format!("{VMIS}/{vm}")).is_ok_and(|b| b.contains("\"phase\":\"Running\""))
}

/// `ipmitool -I iface` as admin/password against the agent, from the client namespace:
/// exit success and stdout.
fn ipmitool(net: &NetnsPair, iface: &str, port: u16, args: &[&str]) -> (bool, String) {
    let host = net.bmc_ip.to_string();
    let port = port.to_string();
    let mut argv = vec![
        "timeout", "60", "ipmitool", "-I", iface, "-H", &host, "-p", &port,
    ];
    argv.extend(["-U", "admin", "-P", "password", "-N", "2", "-R", "3"]);
    argv.extend_from_slice(args);
    let out = NetnsPair::exec(&net.client, &argv).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {}\n{text}", argv[2..].join(" "));
    (out.status.success(), text)
}

/// Polls until `cond` holds, while both daemons run; panics naming `what` after [`SETTLE`].
#[track_caller]
fn wait_for<T>(what: &str, daemons: &mut [&mut Daemon], mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        for d in daemons.iter_mut() {
            d.assert_alive();
        }
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < SETTLE, "{what}: not within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The fast path's counter for `action` on the agent's /metrics.
fn fast_counter(net: &NetnsPair, action: &str) -> u64 {
    let text = NetnsPair::curl(&net.bmc, &format!("http://{ADMIN}/metrics")).unwrap();
    let key = format!("virtbmc_fastpath_packets_total{{action=\"{action}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} on /metrics (fast path off?):\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn image_holds_only_the_agent_and_serves_a_cluster_from_its_root_fs() {
    let test = "image_holds_only_the_agent_and_serves_a_cluster_from_its_root_fs";
    if xdp_support::skip(test)
        || virtbmc_e2e::skip_unless_ready(test, &["podman", "ipmitool", "ldd", "objcopy"])
    {
        return;
    }
    let agent = virtbmc_e2e::agent_binary();
    let kubesim = kubesim_binary();
    for bin in [&agent, &kubesim] {
        assert!(
            bin.is_file(),
            "{} missing: `cargo build --release -p virtbmc -p kubesim`",
            bin.display()
        );
    }
    let object = xdp_support::object();
    let scratch = Scratch::new();

    // The image, as `cargo xtask image` builds it.
    let context = scratch.path("context");
    let staged = image::stage(&agent, &object, &context).unwrap();
    let tag = image::tag();
    let start = Instant::now();
    let out = scratch.podman.build(&context, &tag).output().unwrap();
    assert!(
        out.status.success(),
        "podman build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("image {tag} built in {:.1}s", start.elapsed().as_secs_f64());

    // The DaemonSet runs this image, by its short name.
    let version = env!("CARGO_PKG_VERSION");
    let ds = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/daemonset.yaml"),
    )
    .unwrap();
    assert!(
        ds.lines()
            .any(|l| l.trim() == format!("image: virtbmc:{version}")),
        "the DaemonSet does not run virtbmc:{version}"
    );
    assert_eq!(tag, format!("docker.io/library/virtbmc:{version}"));

    // Its configuration: the agent as entrypoint, the object named for it.
    let inspect = |format: &str| {
        scratch
            .podman
            .run(&["image", "inspect", "--format", format, &tag])
            .unwrap()
    };
    assert_eq!(
        inspect("{{json .Config.Entrypoint}}").trim(),
        format!("[\"{}\"]", image::AGENT_PATH)
    );
    let env: Vec<(String, String)> = inspect("{{range .Config.Env}}{{println .}}{{end}}")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        env.iter()
            .any(|(k, v)| k == "VIRTBMC_EBPF_OBJECT" && v == image::OBJECT_PATH),
        "{env:?}"
    );

    // Its root file system, copied out of podman's mount of the image.
    let rootfs = scratch.path("rootfs");
    let mount = scratch.podman.run(&["image", "mount", &tag]).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(Path::new(mount.trim()).join("."))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {} failed", mount.trim());
    scratch.podman.run(&["image", "unmount", &tag]).unwrap();

    let entries = walk(&rootfs);
    let files: Vec<PathBuf> = entries
        .iter()
        .filter(|(_, k)| *k != "dir")
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        files,
        staged.files(),
        "the image holds exactly the agent, the object and the libraries: {entries:?}"
    );
    assert!(
        entries.iter().all(|(_, k)| matches!(*k, "dir" | "file")),
        "{entries:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| !["sh", "bash", "busybox"].contains(&f.file_name().unwrap().to_str().unwrap())),
        "a shell in the image: {files:?}"
    );
    let inside = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap());
    let same = |a: &Path, b: &Path| std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
    assert!(same(&inside(Path::new(image::OBJECT_PATH)), &object));
    assert!(same(
        &inside(Path::new(image::AGENT_PATH)),
        &context.join("virtbmc")
    ));
    for lib in &staged.libraries {
        assert!(same(&inside(lib), lib), "{} differs", lib.display());
    }

    // What the runtime provides a pod: mount points for /proc, /sys and the hostPath.
    for dir in ["proc", "sys", POD_PIN_DIR] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/virtbmc-e2e-image-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).unwrap();

    let net = NetnsPair::create();
    let bmc_ip = net.bmc_ip.to_string();
    // The Pod that stands for the agent: the elected agent lists it as every BMC Service's
    // endpoint (its label is the agent's default --agent-selector).
    let seed = scratch.path("seed.json");
    std::fs::write(
        &seed,
        format!(
            r#"[{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "virtbmc-node1", "labels": {{"app.kubernetes.io/name": "virtbmc"}}}},
  "spec": {{"nodeName": "node1", "containers": [{{"name": "virtbmc", "image": "virtbmc:{version}"}}]}},
  "status": {{"phase": "Running", "podIP": "{bmc_ip}", "podIPs": [{{"ip": "{bmc_ip}"}}],
             "conditions": [{{"type": "Ready", "status": "True"}}]}}}}]"#
        ),
    )
    .unwrap();
    let mut sim = Daemon::spawn(
        "kubesim",
        NetnsPair::exec(
            &net.bmc,
            &[
                kubesim.to_str().unwrap(),
                "--listen",
                API,
                "--vms",
                "2",
                "--run-strategy",
                "Halted,Always",
                "--with-bmcs",
                "--seed",
                seed.to_str().unwrap(),
                "--phase-delay-ms",
                "100-300",
                "--stop-delay-ms",
                "500",
            ],
        ),
        scratch.path("kubesim.log"),
    );
    let kube_url = format!("http://{API}");
    let mut env = env;
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("NODE_NAME".into(), "node1".into()));
    let mut agent = Daemon::spawn(
        "agent",
        jailed(
            &rootfs,
            &net.bmc,
            &pins.0,
            image::AGENT_PATH,
            &[
                "--kube-url",
                &kube_url,
                "--listen",
                &bmc_ip,
                "--port-range",
                PORTS,
                "--admin",
                ADMIN,
                "--xdp-iface",
                "vbmc0",
                "--xdp-mode",
                "auto",
                "--bpf-pin-dir",
                &format!("/{POD_PIN_DIR}"),
            ],
            &env,
        ),
        scratch.path("agent.log"),
    );

    // The elected agent gives each BMC a port; the cluster starts vm-2 (Always).
    let ports = wait_for("both BMCs with a port", &mut [&mut sim, &mut agent], || {
        let p1 = status_port(&kubesim_get(&net, &format!("{BMCS}/vm-1-bmc")).ok()?)?;
        let p2 = status_port(&kubesim_get(&net, &format!("{BMCS}/vm-2-bmc")).ok()?)?;
        Some((p1, p2))
    });
    let (p1, p2) = ports;
    assert_ne!(p1, p2);
    wait_for("vm-2's VMI Running", &mut [&mut sim, &mut agent], || {
        vmi_running(&net, "vm-2").then_some(())
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap());
    assert_eq!(
        cap_eff,
        Some(POD_CAPS),
        "the agent holds only the pod's capabilities"
    );
    // Its root, as it sees it: the image's files, read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.child.id())).unwrap();
    let root_options = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .rfind(|f| f.get(4) == Some(&"/"))
        .map(|f| f[5].to_string());
    assert!(
        root_options
            .as_deref()
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "the agent's root is not read-only: {root_options:?}\n{mounts}"
    );
    assert!(
        agent.log().contains("generic"),
        "XDP attached in generic mode:\n{}",
        agent.log()
    );

    // Each BMC reads back its VM's state: vm-1 (Halted) off, vm-2 (running) on.
    wait_for("vm-1's BMC answering", &mut [&mut sim, &mut agent], || {
        let (ok, text) = ipmitool(&net, "lanplus", p1, &["power", "status"]);
        (ok && text.contains("Chassis Power is off")).then_some(())
    });
    wait_for("vm-2's BMC saying on", &mut [&mut sim, &mut agent], || {
        let (ok, text) = ipmitool(&net, "lanplus", p2, &["power", "status"]);
        (ok && text.contains("Chassis Power is on")).then_some(())
    });

    // Power on over IPMI 1.5: KubeVirt's start, the VMI runs, the BMC says on.
    let before = fast_counter(&net, "answered_auth_caps");
    let (ok, text) = ipmitool(&net, "lan", p1, &["power", "on"]);
    assert!(
        ok && text.contains("Chassis Power Control: Up/On"),
        "{text}"
    );
    wait_for("vm-1's VMI Running", &mut [&mut sim, &mut agent], || {
        vmi_running(&net, "vm-1").then_some(())
    });
    wait_for("vm-1's BMC saying on", &mut [&mut sim, &mut agent], || {
        let (ok, text) = ipmitool(&net, "lan", p1, &["power", "status"]);
        (ok && text.contains("Chassis Power is on")).then_some(())
    });
    // The image's XDP object answered the IPMI 1.5 clients' capability requests.
    let after = fast_counter(&net, "answered_auth_caps");
    assert!(
        after > before,
        "the fast path answered no auth capabilities ({before} -> {after})"
    );
    agent.assert_alive();
    sim.assert_alive();
}
