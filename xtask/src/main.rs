//! `cargo xtask <command>`: the project's developer workflows, in Rust so that nothing of the
//! build needs a shell script to remember (std only; builds in seconds).
//!
//! - `demo`: build the agent, run it with three VMs in a network namespace and drive it with
//!   real ipmitool commands, printing everything; cleans up on exit, failure or Ctrl-C.
//!   `demo cluster`: the same against the simulated KubeVirt cluster (kubesim).
//! - `test`: install missing client tools (apt), build, run the unit tests and the end-to-end
//!   tests (as root, with `VIRTBMC_E2E_REQUIRED=1`), then a one-minute soak.
//! - `soak [MINUTES]`: the agent under mixed real clients, killed clients and garbage for a
//!   while, every answer checked and its memory, descriptors and sessions sampled
//!   (`soak-garbage` is its garbage sender, run inside the client namespace).
//! - `image`: the container image the DaemonSet runs, built with podman from `Containerfile`.

mod demo;
mod demo_cluster;
mod ebpf;
mod fuzz;
mod image;
mod interrupt;
mod json;
mod soak;
mod test;
mod tools;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo            build the agent, run it with 3 VMs in a network namespace, drive it with ipmitool
  demo cluster    the same in cluster mode, against a simulated KubeVirt cluster (kubesim)
  test [FILTER]   install missing client tools, build, run unit and end-to-end tests (needs root)
  soak [MINUTES]  the agent under mixed real clients, killed clients and garbage for MINUTES
                  (default 1): every answer checked, no growth of memory, fds or sessions
  fuzz [RUNS]     run the engine fuzz target for RUNS inputs (default 300000; nightly)
  bench [SECS]    benchmark the userspace path, memory per BMC, XDP off vs on over a veth,
                  and whole sessions and session-less answers beside ipmi_sim (openipmi)
  bench cluster [N...]  cluster mode against kubesim: memory, CPU, phase-change latency
  bench sol [KEYS] [SECS]  Serial-over-LAN in cluster mode: keystroke-to-echo latency through
                  SOL beside the console subresource directly, and a flooding guest's bit/s
  bench redfish [SECS]  Redfish requests/s (GET System, power changes) beside the same
                  through IPMI, and memory per BMC with Redfish on and off
  build-ebpf      install rust-src/bpf-linker if missing, build the XDP object (nightly)
  image           build the container image virtbmc:<version> with podman (FROM scratch) and
                  save it to target/image/virtbmc-<version>.tar";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => match args.get(1).map(String::as_str) {
            None => demo::run(),
            Some("cluster") => demo_cluster::run(),
            Some(other) => Err(format!("unknown demo `{other}`\n\n{USAGE}")),
        },
        Some("test") => test::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("soak-garbage") => soak::garbage::helper(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("build-ebpf") => ebpf::build_ebpf().map(drop),
        Some("image") => image::run(),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The userspace, veth and ipmi_sim benchmark (`bench [SECS]`), or the cluster-mode one
/// (`bench cluster [N...]`: kubesim with N VMs, default 1,000 and 10,000).
fn bench(args: &[String]) -> Result<(), String> {
    // Built in release, as the agent is; the path of the binary.
    let example = |name: &str| -> Result<std::path::PathBuf, String> {
        tools::run(tools::cargo().args([
            "build",
            "--release",
            "-p",
            "virtbmc",
            "--example",
            name,
        ]))?;
        Ok(tools::target_dir().join("release/examples").join(name))
    };
    if args.first().map(String::as_str) == Some("sol") {
        // In-process (kubesim and the agent): no agent binary, no XDP, no root.
        return tools::run(std::process::Command::new(example("sol_bench")?).args(&args[1..]));
    }
    let agent = tools::build_agent()?;
    if args.first().map(String::as_str) == Some("redfish") {
        // The release agent on loopback: no XDP, no peer to install.
        let bin = example("redfish_bench")?;
        return tools::run(std::process::Command::new(bin).arg(&agent).args(&args[1..]));
    }
    let object = ebpf::build_ebpf()?;
    let (example, rest) = match args.first().map(String::as_str) {
        Some("cluster") => ("cluster_bench", &args[1..]),
        _ => ("bench", args),
    };
    if example == "bench"
        && let Err(why) = tools::ensure_ipmi_sim()
    {
        println!("==> {why}: the comparison with ipmi_sim will be skipped");
    }
    tools::run(tools::cargo().args(["build", "--release", "-p", "virtbmc", "--example", example]))?;
    let bin = tools::target_dir().join("release/examples").join(example);
    let mut cmd = std::process::Command::new(bin);
    if example == "bench" {
        cmd.arg(&agent)
            .arg(rest.first().map_or("2", String::as_str))
            .arg(&object);
    } else {
        cmd.arg(&agent).arg(&object).args(rest);
    }
    tools::run(&mut cmd)
}
