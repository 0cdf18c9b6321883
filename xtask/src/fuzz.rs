//! `cargo xtask fuzz [RUNS]`: the engine fuzz target (fuzz/), bounded. Installs cargo-fuzz
//! (from crates.io) when missing; libFuzzer needs the nightly toolchain.

use crate::tools;

pub const DEFAULT_RUNS: &str = "300000";

pub fn run(args: &[String]) -> Result<(), String> {
    let runs = args.first().map(String::as_str).unwrap_or(DEFAULT_RUNS);
    let has_fuzz = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        tools::run(std::process::Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
        ]))?;
    }
    let dict = format!("-dict={}", tools::root().join("fuzz/engine.dict").display());
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(tools::root().join("fuzz"))
        .args([
            "+nightly",
            "fuzz",
            "run",
            "engine",
            "--",
            &format!("-runs={runs}"),
            "-max_len=512",
            // Handshake tokens (see fuzz/fuzz_targets/engine.rs) and message prefixes.
            &dict,
        ])
        // rustup must pick the nightly named on the command line, not xtask's own toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    tools::run(&mut cmd)
}
