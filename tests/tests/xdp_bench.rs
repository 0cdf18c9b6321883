//! Benchmark (prints, asserts only that each request takes the expected path): nanoseconds
//! per packet through the XDP program under `BPF_PROG_TEST_RUN`, per answered type.
//!
//! A repeated test run reuses the frame the previous run rewrote, so the benchmark object
//! (`virtbmc-ebpf-bench`, built by `cargo xtask build-ebpf`) restores the request from a map
//! before running the real program (`virtbmc_bench`), and a second program only restores
//! (`virtbmc_bench_restore`); the difference is the program's own cost.
//!
//! `cargo test -p virtbmc-e2e --test xdp_bench -- --nocapture` (root). `XDP_BENCH_REPEAT`
//! sets the repeat count (default 1,000,000).

mod xdp_support;

use std::io::Write;
use std::path::PathBuf;

use aya::maps::{Array, HashMap};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use virtbmc_common::BmcState;
use xdp_support::*;

#[repr(C)]
#[derive(Clone, Copy)]
struct BenchFrame {
    len: u32,
    frame: [u8; 128],
}
// SAFETY: plain bytes, no padding (4 + 128).
unsafe impl aya::Pod for BenchFrame {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct State(BmcState);
// SAFETY: BmcState is bytemuck::Pod.
unsafe impl aya::Pod for State {}

fn bench_object() -> PathBuf {
    object().with_file_name("virtbmc-ebpf-bench")
}

fn per_run_ns(prog: &Xdp, frame: &[u8], repeat: u32) -> (u32, f64) {
    let mut out = vec![0u8; 512];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("test_run");
    (r.return_value, r.duration.as_nanos() as f64)
}

#[test]
fn xdp_bench_ns_per_packet() {
    if skip("xdp_bench_ns_per_packet") {
        return;
    }
    if !bench_object().exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP xdp_bench: {} missing",
            bench_object().display()
        );
        return;
    }
    let repeat: u32 = std::env::var("XDP_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut ebpf = aya::Ebpf::load_file(bench_object()).expect("load bench object");
    for name in ["virtbmc_bench", "virtbmc_bench_restore"] {
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect(name);
    }
    let mut bmcs: HashMap<_, u16, State> =
        HashMap::try_from(ebpf.map_mut("BMCS").unwrap()).unwrap();
    bmcs.insert(BMC_PORT, State(state(false)), 0).unwrap();

    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let (c6, b6) = ((CLIENT_V6, CLIENT_PORT), (BMC_V6, BMC_PORT));
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("presence ping (v4)", v4(c4, b4, &ping(1)), XDP_TX),
        (
            "auth caps 1.5 (v4)",
            v4(c4, b4, &v15(&auth_caps_req(0x8E, 4))),
            XDP_TX,
        ),
        (
            "cipher suites 1.5 (v4)",
            v4(c4, b4, &v15(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
        ),
        (
            "cipher suites RMCP+ (v4)",
            v4(c4, b4, &v20(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
        ),
        (
            "cipher suites RMCP+ (v6)",
            v6(c6, b6, &v20(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
        ),
        (
            "BMC port, passed (RMCP+ session)",
            v4(
                c4,
                b4,
                &[
                    0x06, 0, 0xFF, 0x07, 0x06, 0xC0, 1, 2, 3, 4, 1, 0, 0, 0, 0x20, 0,
                ]
                .iter()
                .copied()
                .chain([0u8; 32])
                .collect::<Vec<_>>(),
            ),
            XDP_PASS,
        ),
        ("not a BMC port", v4(c4, (BMC_V4, 53), &ping(1)), XDP_PASS),
    ];
    let mut report =
        format!("\nXDP fast path, BPF_PROG_TEST_RUN, repeat {repeat} (ns per packet)\n");
    report += &format!(
        "{:<36} {:>9} {:>9} {:>9}\n",
        "request", "total", "restore", "program"
    );
    for (name, frame, want) in cases {
        let mut bf = BenchFrame {
            len: frame.len() as u32,
            frame: [0; 128],
        };
        bf.frame[..frame.len()].copy_from_slice(&frame);
        {
            let mut bench: Array<_, BenchFrame> =
                Array::try_from(ebpf.map_mut("BENCH").unwrap()).unwrap();
            bench.set(0, bf, 0).unwrap();
        }
        let full: &Xdp = ebpf.program("virtbmc_bench").unwrap().try_into().unwrap();
        let restore: &Xdp = ebpf
            .program("virtbmc_bench_restore")
            .unwrap()
            .try_into()
            .unwrap();
        // Warm up, check the path, then time.
        let (action, _) = per_run_ns(full, &frame, 1000);
        assert_eq!(action, want, "{name}");
        let (_, total) = per_run_ns(full, &frame, repeat);
        let (_, base) = per_run_ns(restore, &frame, repeat);
        report += &format!(
            "{name:<36} {total:>9.1} {base:>9.1} {:>9.1}\n",
            total - base
        );
    }
    let _ = writeln!(std::io::stderr(), "{report}");
}
