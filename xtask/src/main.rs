//! `cargo xtask <command>`: the project's developer workflows, in Rust so that nothing of the
//! build needs a shell script to remember (std only; builds in seconds).
//!
//! - `demo`: build the agent, run it with three VMs in a network namespace and drive it with
//!   real ipmitool commands, printing everything; cleans up on exit, failure or Ctrl-C.
//! - `test`: install missing client tools (apt), build, run the unit tests and the end-to-end
//!   tests (as root, with `VIRTBMC_E2E_REQUIRED=1`).

mod demo;
mod ebpf;
mod fuzz;
mod interrupt;
mod test;
mod tools;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo            build the agent, run it with 3 VMs in a network namespace, drive it with ipmitool
  test [FILTER]   install missing client tools, build, run unit and end-to-end tests (needs root)
  fuzz [RUNS]     run the engine fuzz target for RUNS inputs (default 300000; nightly)
  bench [SECS]    benchmark the userspace path and the agent's memory per BMC
  build-ebpf      install rust-src/bpf-linker if missing, build the XDP object (nightly)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("test") => test::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("build-ebpf") => ebpf::build_ebpf().map(drop),
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

/// Release agent plus the benchmark example, which prints its figures side by side.
fn bench(args: &[String]) -> Result<(), String> {
    let agent = tools::build_agent()?;
    tools::run(tools::cargo().args(["build", "--release", "-p", "virtbmc", "--example", "bench"]))?;
    let bin = tools::root().join("target/release/examples/bench");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(&agent).args(args);
    tools::run(&mut cmd)
}
