//! `cargo xtask test [FILTER]`: tools, release build, unit tests, end-to-end tests, a
//! one-minute soak, a bounded fuzz run.

use crate::tools;

pub fn run(args: &[String]) -> Result<(), String> {
    if !virtbmc_e2e::is_root() {
        return Err("the end-to-end tests need root (network namespaces): run as root".into());
    }
    tools::ensure_installed()?;
    let agent = tools::build_agent()?;
    // The simulated cluster the image test runs the agent against.
    let kubesim = tools::build_release("kubesim")?;
    // The XDP object (nightly + bpf-linker, installed when missing): the fast-path tests load
    // it into the kernel, and must fail rather than skip when it is absent.
    let object = crate::ebpf::build_ebpf()?;

    // Unit tests of every crate except the e2e one, whose own run follows.
    let unit = tools::run(tools::cargo().args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "virtbmc-e2e",
    ]));

    // End-to-end: real clients against the release agent; --no-fail-fast so that one failing
    // test file does not hide the results of the others. Two threads: each test runs the
    // agent and clients, and this must stay robust on 2 cores.
    let mut e2e_cmd = tools::cargo();
    e2e_cmd
        .args(["test", "--no-fail-fast", "-p", "virtbmc-e2e", "--"])
        .args(args)
        .args(["--test-threads", "2"])
        .env("VIRTBMC_E2E_REQUIRED", "1")
        .env("VIRTBMC_XDP_REQUIRED", "1")
        .env("VIRTBMC_EBPF_OBJECT", &object)
        .env("VIRTBMC_BIN", &agent)
        .env("VIRTBMC_KUBESIM_BIN", &kubesim);
    let e2e = tools::run(&mut e2e_cmd);

    // One minute of mixed clients, killed clients and garbage, with the fast path on.
    let soak = crate::soak::soak(&agent, Some(&object), std::time::Duration::from_secs(60));

    // The engine under libFuzzer, bounded in runs (about a minute once built).
    let fuzz = crate::fuzz::run(&[]);

    match (unit, e2e, soak, fuzz) {
        (Ok(()), Ok(()), Ok(()), Ok(())) => {
            println!(
                "==> xtask test: unit tests passed, end-to-end tests passed, soak passed, fuzzing found nothing"
            );
            Ok(())
        }
        (u, e, s, f) => Err(format!(
            "unit tests {}, end-to-end tests {}, soak {}, fuzzing {}",
            u.map_or_else(|e| format!("FAILED ({e})"), |()| "passed".into()),
            e.map_or_else(|e| format!("FAILED ({e})"), |()| "passed".into()),
            s.map_or_else(|e| format!("FAILED ({e})"), |()| "passed".into()),
            f.map_or_else(|e| format!("FAILED ({e})"), |()| "passed".into()),
        )),
    }
}
