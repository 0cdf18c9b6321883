//! The tokio agent: binds one UDP socket per BMC, runs each BMC's loop, serves the admin
//! endpoint, and stops cleanly on SIGINT/SIGTERM.

pub mod action;
pub mod admin;
pub mod config;
pub mod metrics;
mod netinfo;
pub mod ready;
pub mod registry;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::backend::embedded::{Embedded, EmbeddedBackend};
use crate::fastpath::{FastPath, FastPathConfig};
use config::Args;
use metrics::Metrics;
use ready::Readiness;
use registry::Registry;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind BMC {vm} to {addr}: {source}")]
    Bind {
        vm: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("XDP fast path: {0} (run with --xdp-mode off to serve without it)")]
    FastPath(#[from] crate::fastpath::FastPathError),
    #[error("cannot bind the admin endpoint {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A GUID derived from the VM's name, stable across agent restarts (the Kubernetes backend
/// uses the VM's firmware UUID instead).
pub fn name_guid(name: &str) -> [u8; 16] {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[6] = (g[6] & 0x0F) | 0x50; // RFC 4122 version 5-style marker
    g[8] = (g[8] & 0x3F) | 0x80;
    crate::engine::vm::uuid_to_wire(g)
}

pub async fn run(args: Args) -> Result<(), AgentError> {
    if args.kube_mode() {
        return run_kube(args).await;
    }
    if args.users.is_empty() {
        return Err(AgentError::Config(
            "no BMC user: pass --user NAME:PASSWORD (or --kube to take users from Secrets)".into(),
        ));
    }
    let config = Arc::new(args.bmc_config().map_err(AgentError::Config)?);
    let vms = args.all_vms();
    if vms.is_empty() {
        return Err(AgentError::Config(
            "no VM to serve: pass --vm NAME=PORT or --generate N".into(),
        ));
    }
    let mut ports = std::collections::HashSet::new();
    if let Some(dup) = vms.iter().find(|v| !ports.insert(v.port)) {
        return Err(AgentError::Config(format!(
            "port {} is given to two VMs",
            dup.port
        )));
    }
    // A UDP socket per BMC, and a TCP listener beside it for Redfish.
    raise_fd_limit(vms.len() as u64 * 2 + 256);
    let embedded = Embedded::new(Duration::from_millis(args.transition_ms));
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend(embedded.clone()));
    let metrics = Arc::new(Metrics::default());
    let (registry, fastpath) = start_registry(&args, backend.clone(), &metrics)?;
    let ready = Arc::new(Readiness::default());
    for vm in &vms {
        embedded.add(&vm.name, vm.on, name_guid(&vm.name));
        let addr = SocketAddr::new(args.listen, vm.port);
        registry
            .add(&vm.name, vm.port, config.clone())
            .await
            .map_err(|source| AgentError::Bind {
                vm: vm.name.clone(),
                addr,
                source,
            })?;
    }
    // Embedded machines need no cache: ready once every socket is bound.
    ready.bmcs_bound();
    tokio::spawn(follow_backend(backend.subscribe(), registry.clone()));
    serve_admin(&args, metrics, embedded, &registry, &fastpath, ready).await?;
    log::info!(
        "serving {} BMC(s) on {} (suites {:?}, auth none {}), admin on http://{}",
        vms.len(),
        args.listen,
        config.cipher_suites,
        if config.allow_auth_none {
            "allowed"
        } else {
            "refused"
        },
        args.admin
    );
    shutdown_signal().await;
    log::info!("shutting down");
    stop_serving(&registry, &fastpath);
    Ok(())
}

/// The cluster mode: every VirtualMachineBMC of the cluster, users from their Secrets.
async fn run_kube(args: Args) -> Result<(), AgentError> {
    use crate::cluster::{ClusterOptions, KubeBackend, serve};
    if !args.vms.is_empty() || args.generate > 0 {
        return Err(AgentError::Config(
            "--vm and --generate define embedded VMs; they do not mix with --kube".into(),
        ));
    }
    if !args.users.is_empty() {
        return Err(AgentError::Config("--user is for embedded VMs; with --kube each VirtualMachineBMC's Secret names its user".into()));
    }
    if !args.role.serves() && args.xdp_iface.is_some() {
        return Err(AgentError::Config(format!(
            "--xdp-iface attaches the BMCs' fast path; --role {} serves no BMC",
            args.role
        )));
    }
    let kube_config = match &args.kube_url {
        Some(url) => {
            let mut config = kube::Config::new(
                url.parse()
                    .map_err(|e| AgentError::Config(format!("--kube-url {url:?}: {e}")))?,
            );
            // kube builds its TLS set-up even for plain HTTP, and with no CA given it asks the
            // system's trust store, which the container image (FROM scratch) does not have:
            // the client would not start. Plain HTTP needs no trust anchors.
            if config.cluster_url.scheme_str() == Some("http") {
                config.root_cert = Some(Vec::new());
            }
            config
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| AgentError::Config(format!("no Kubernetes configuration: {e}")))?,
    };
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let client = kube::Client::try_from(kube_config)
        .map_err(|e| AgentError::Config(format!("Kubernetes client: {e}")))?;
    let base = args.bmc_config().map_err(AgentError::Config)?;
    let mut opts = ClusterOptions::new(&args.identity(), &lease_namespace, base);
    opts.role = args.role;
    opts.port_range = args.port_range.0..=args.port_range.1;
    opts.agent_namespace = args.agent_namespace(&lease_namespace);
    opts.agent_selector = args.agent_selector.clone();
    opts.labels = args.label_mode().map_err(AgentError::Config)?;
    opts.media_ca_configmap = args.media_ca_configmap.clone();
    raise_fd_limit(opts.port_range.len() as u64 * 2 + 256);
    let metrics = Arc::new(Metrics::default());
    let (backend, writers) = KubeBackend::new(client, opts, metrics.clone());
    // A controller binds no BMC socket: its registry stays empty, and it loads no XDP
    // program and makes no Redfish certificate.
    let (registry, fastpath) = if args.role.serves() {
        start_registry(&args, Arc::new(backend.clone()), &metrics)?
    } else {
        idle_registry(&args, Arc::new(backend.clone()), &metrics)
    };
    tokio::spawn(follow_backend(backend.subscribe(), registry.clone()));
    let tasks = serve::spawn(&backend, writers, registry.clone());
    // /vms lists embedded machines only; in this mode it is empty.
    let embedded = Embedded::new(Duration::ZERO);
    let ready = backend.shared.ready.clone();
    serve_admin(&args, metrics, embedded, &registry, &fastpath, ready).await?;
    match &backend.shared.opts.labels {
        Some(m) => log::info!(
            "label mode (no CRD): VMs matching {:?} get a BMC, user from Secret {}/{}",
            m.selector,
            m.secret_namespace,
            m.secret_name
        ),
        None => log::info!("serving every VirtualMachineBMC"),
    }
    log::info!(
        "cluster mode: role {}, identity {}, lease {lease_namespace}/{}, ports {}-{}, admin on http://{}",
        args.role,
        backend.shared.opts.identity,
        backend.shared.opts.lease_name,
        args.port_range.0,
        args.port_range.1,
        args.admin
    );
    shutdown_signal().await;
    log::info!("shutting down");
    for t in tasks {
        t.abort();
    }
    // A boot override half applied would be finished by the next agent; better done now.
    backend.shared.finish_work(Duration::from_secs(2)).await;
    // A successor need not wait for the Lease to run out (bounded: shutdown must not hang
    // on an unreachable API server).
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        crate::cluster::lease::release(&backend.shared),
    )
    .await;
    stop_serving(&registry, &fastpath);
    Ok(())
}

type SharedFastPath = Arc<std::sync::Mutex<FastPath>>;

/// What both modes serve through: the XDP program (if asked for) and the registry of BMC
/// sockets over `backend`, which keeps the program's maps in step.
fn start_registry(
    args: &Args,
    backend: Arc<dyn Backend>,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Registry>, SharedFastPath), AgentError> {
    let fastpath = Arc::new(std::sync::Mutex::new(start_fastpath(args)?));
    let mut registry = Registry::new(
        args.listen,
        backend,
        metrics.clone(),
        Duration::from_millis(args.action_timeout_ms),
        fastpath.clone(),
    );
    if !args.no_redfish {
        let files = args.redfish_cert.clone().zip(args.redfish_key.clone());
        let tls = crate::redfish::tls::server_config(files, vec![args.listen.to_string()])
            .map_err(|e| AgentError::Config(e.to_string()))?;
        if args.redfish_plain_http {
            log::warn!(
                "redfish: plain HTTP is answered beside HTTPS (--redfish-plain-http): passwords and session tokens cross the network unencrypted"
            );
        }
        registry = registry.with_redfish(Arc::new(crate::redfish::Redfish {
            tls: tokio_rustls::TlsAcceptor::from(tls),
            plain_http: args.redfish_plain_http,
            metrics: metrics.redfish.clone(),
        }));
    }
    Ok((Arc::new(registry), fastpath))
}

/// The registry of a process that serves no BMC: the admin endpoint's `/vms` lists nothing.
fn idle_registry(
    args: &Args,
    backend: Arc<dyn Backend>,
    metrics: &Arc<Metrics>,
) -> (Arc<Registry>, SharedFastPath) {
    let fastpath = Arc::new(std::sync::Mutex::new(FastPath::off()));
    let registry = Registry::new(
        args.listen,
        backend,
        metrics.clone(),
        Duration::from_millis(args.action_timeout_ms),
        fastpath.clone(),
    );
    (Arc::new(registry), fastpath)
}

/// Binds the admin endpoint (`/healthz`, `/readyz`, `/vms`, `/metrics`) and serves it.
async fn serve_admin(
    args: &Args,
    metrics: Arc<Metrics>,
    embedded: Arc<Embedded>,
    registry: &Arc<Registry>,
    fastpath: &SharedFastPath,
    ready: Arc<Readiness>,
) -> Result<(), AgentError> {
    let listener = TcpListener::bind(args.admin)
        .await
        .map_err(|source| AgentError::Admin {
            addr: args.admin,
            source,
        })?;
    let admin = Arc::new(admin::Admin {
        metrics,
        embedded,
        registry: registry.clone(),
        fastpath: fastpath.clone(),
        ready,
    });
    tokio::spawn(admin.serve(listener));
    Ok(())
}

/// BMCs leave the map before their sockets close; then the program is detached and its pins
/// removed, so a restart finds nothing stale.
fn stop_serving(registry: &Registry, fastpath: &std::sync::Mutex<FastPath>) {
    for (_, port) in registry.list() {
        registry.remove(port);
    }
    let fp = std::mem::replace(
        &mut *fastpath.lock().unwrap_or_else(|e| e.into_inner()),
        FastPath::off(),
    );
    fp.shutdown();
}

/// Loads and attaches the XDP program when an interface is named (`--xdp-iface`).
fn start_fastpath(args: &Args) -> Result<FastPath, AgentError> {
    let Some(iface) = &args.xdp_iface else {
        log::info!("fastpath: no --xdp-iface, every packet goes to userspace");
        return Ok(FastPath::off());
    };
    let object = FastPathConfig::default_object(args.ebpf_object.as_deref(), None);
    let mut config = FastPathConfig::new(object, Some(iface.clone()), args.xdp_mode);
    config.pin_dir = args.bpf_pin_dir.clone();
    let fp = FastPath::start(&config)?;
    Ok(fp)
}

/// Keeps the fast path's power map in step with the backend: one map write per change.
async fn follow_backend(
    mut changes: tokio::sync::broadcast::Receiver<Arc<str>>,
    registry: Arc<Registry>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(name) => registry.sync(&name),
            Err(RecvError::Lagged(missed)) => {
                log::warn!(
                    "fastpath: {missed} change notifications missed, re-publishing every BMC"
                );
                registry.sync_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One socket per BMC: make room for them all (the soft limit is often 1024).
fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < want {
                log::warn!(
                    "open-file limit {} is below the {want} this agent needs",
                    lim.rlim_cur
                );
            }
        }
    }
}
