//! `kubesim`: run the test API server standalone (for the demo).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

/// A Kubernetes API server with simulated KubeVirt, for tests and demos. Not a real cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: std::net::SocketAddr,
    /// Create this many VirtualMachines, named <prefix>-<i> (from 1).
    #[arg(long, default_value_t = 0)]
    vms: usize,
    /// Name prefix of the created VMs.
    #[arg(long, default_value = "vm")]
    vm_prefix: String,
    /// Namespace of the created objects.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// runStrategy of the created VMs (Always, Halted, Manual, RerunOnFailure, Once); a
    /// comma-separated list is taken in turn, VM by VM (the demo gives each VM its own).
    #[arg(long, default_value = "Halted", value_delimiter = ',')]
    run_strategy: Vec<String>,
    /// Also create, per VM, a Secret <vm>-bmc-auth (admin/password) and a VirtualMachineBMC <vm>-bmc.
    #[arg(long)]
    with_bmcs: bool,
    /// A JSON file with objects to create: an array, or a List with `items`. Each object
    /// needs apiVersion, kind, metadata.name (and metadata.namespace, default: --namespace).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// VMI phase step delay range in milliseconds, "MIN-MAX".
    #[arg(long, default_value = "500-1500")]
    phase_delay_ms: String,
    /// Graceful guest shutdown time in milliseconds.
    #[arg(long, default_value_t = 2000)]
    stop_delay_ms: u64,
    /// Node the simulated scheduler puts VMIs on; a comma-separated list spreads them (stably by VM name).
    #[arg(long, default_value = "node1")]
    node_name: String,
    /// Seconds between BOOKMARKs on idle watches.
    #[arg(long, default_value_t = 30)]
    bookmark_secs: u64,
    /// Change events kept for watches to resume from (older resourceVersions get 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    history_window: usize,
    /// Do not run the simulated virt-controller.
    #[arg(long)]
    no_controller: bool,
    /// Print the listen URL to this file once serving (for scripts).
    #[arg(long)]
    url_file: Option<PathBuf>,
    /// Write a kubeconfig for this server here (for KUBECONFIG=... kubectl or the agent).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The bearer token the --kubeconfig file authenticates with.
    #[arg(long, value_name = "TOKEN")]
    kubeconfig_token: Option<String>,
    /// The --kubeconfig file's default namespace (default: --namespace), e.g. the agent's
    /// own, where its Lease goes.
    #[arg(long, value_name = "NAMESPACE")]
    kubeconfig_namespace: Option<String>,
    /// A bearer token and the user it authenticates: `TOKEN=NAME[,GROUP...]` (repeatable),
    /// e.g. `t1=system:serviceaccount:virtbmc-system:virtbmc` or
    /// `t0=kubernetes-admin,system:masters` (that group is never refused). With any token,
    /// every request needs a known one (401) and RBAC decides what it may do (403).
    #[arg(long = "token", value_name = "TOKEN=USER")]
    tokens: Vec<String>,
    /// A manifest (multi-document YAML) whose Roles, ClusterRoles, RoleBindings and
    /// ClusterRoleBindings RBAC enforces, and whose ValidatingAdmissionPolicies (with their
    /// bindings) judge updates (repeatable; needs --token).
    #[arg(long = "rbac", value_name = "FILE", requires = "tokens")]
    rbac: Vec<PathBuf>,
}

fn parse_range(s: &str) -> Option<(Duration, Duration)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    Some((
        Duration::from_millis(a.trim().parse().ok()?),
        Duration::from_millis(b.trim().parse().ok()?),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let phase_delay =
        parse_range(&args.phase_delay_ms).ok_or("--phase-delay-ms: expected MIN-MAX in ms")?;
    let auth = if args.tokens.is_empty() {
        None
    } else {
        let mut a = kubesim::rbac::AuthConfig::default();
        for t in &args.tokens {
            a.add_token(t).map_err(|e| format!("--token {e}"))?;
        }
        for f in &args.rbac {
            a.add_manifest_file(f).map_err(|e| format!("--rbac {e}"))?;
        }
        Some(a)
    };
    let cfg = kubesim::Config {
        auth,
        phase_delay,
        stop_delay: Duration::from_millis(args.stop_delay_ms),
        node_name: args.node_name.clone(),
        bookmark_interval: Duration::from_secs(args.bookmark_secs.max(1)),
        controller: !args.no_controller,
        history_window: args.history_window,
        ..kubesim::Config::default()
    };
    let sim = kubesim::Server::start_with(args.listen, cfg).await?;
    let ns = args.namespace.as_str();
    let mut seeded = 0usize;
    for (i, strategy) in (1..=args.vms).zip(args.run_strategy.iter().cycle()) {
        let name = format!("{}-{i}", args.vm_prefix);
        sim.seed_vm(ns, &name, strategy);
        seeded += 1;
        if args.with_bmcs {
            let secret = format!("{name}-bmc-auth");
            sim.seed_secret(
                ns,
                &secret,
                &[("username", "admin"), ("password", "password")],
            );
            sim.seed_vmbmc(ns, &format!("{name}-bmc"), &name, &secret);
            seeded += 2;
        }
    }
    if let Some(path) = &args.seed {
        let v: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let items = match v {
            Value::Array(a) => a,
            Value::Object(ref m) if m.contains_key("items") => {
                m["items"].as_array().cloned().unwrap_or_default()
            }
            other => vec![other],
        };
        for obj in items {
            let av = obj["apiVersion"].as_str().unwrap_or("");
            let k = obj["kind"].as_str().unwrap_or("");
            let kind = kubesim::Kind::from_type(av, k)
                .ok_or_else(|| format!("seed: unsupported kind {av}/{k}"))?;
            let ons = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or(ns)
                .to_string();
            let status = obj.get("status").cloned();
            let created = sim.create(kind, &ons, obj)?;
            seeded += 1;
            if let Some(s) = status {
                let name = created["metadata"]["name"].as_str().unwrap_or("");
                sim.set_status(kind, &ons, name, s);
            }
        }
    }
    if let Some(f) = &args.kubeconfig {
        let ns = args
            .kubeconfig_namespace
            .as_ref()
            .unwrap_or(&args.namespace);
        let kc = sim.kubeconfig_as(ns, args.kubeconfig_token.as_deref());
        std::fs::write(f, kc)?;
    }
    if let Some(f) = &args.url_file {
        std::fs::write(f, format!("{}\n", sim.url()))?;
    }
    println!("kubesim serving {} ({seeded} objects seeded)", sim.url());
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
