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
use virtbmc_common::session::{SESSION_ACTIVE, V15Session, window_pack};
use xdp_support::*;

#[repr(C)]
#[derive(Clone, Copy)]
struct BenchFrame {
    len: u32,
    reset_slot: u32,
    reset_window: u64,
    frame: [u8; 128],
}
// SAFETY: plain bytes, no padding (4 + 4 + 8 + 128).
unsafe impl aya::Pod for BenchFrame {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Slot(V15Session);
// SAFETY: V15Session is bytemuck::Pod.
unsafe impl aya::Pod for Slot {}

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

    // A published MD5 session in slot 5 (and a straight-password one in slot 6).
    let (sid_md5, sid_pw, seq) = (0x1234_5678u32, 0x0BAD_F00Du32, 1000u32);
    let mut peer = [0u8; 16];
    peer[..4].copy_from_slice(&CLIENT_V4.octets());
    let mut password = [0u8; 16];
    password[..8].copy_from_slice(b"password");
    let window = window_pack(seq - 1, 1);
    for (slot, sid, auth) in [(5u32, sid_md5, 2u8), (6, sid_pw, 4)] {
        let s = V15Session {
            state: SESSION_ACTIVE,
            session_id: sid,
            port: BMC_PORT,
            auth_type: auth,
            privilege: 4,
            family: 4,
            _pad0: 0,
            peer_port: CLIENT_PORT,
            peer,
            password,
            window,
            outbound: 1,
            idle_timeout_ms: 60_000,
            // Just active: the program answers only inside the idle limit.
            last_activity_ns: virtbmc::fastpath::monotonic_ns(),
            fast_answers: 0,
        };
        let mut slots: Array<_, Slot> = Array::try_from(ebpf.map_mut("SESSIONS").unwrap()).unwrap();
        slots.set(slot, Slot(s), 0).unwrap();
        let mut ids: HashMap<_, u32, u32> =
            HashMap::try_from(ebpf.map_mut("SESSION_IDS").unwrap()).unwrap();
        ids.insert(sid, slot, 0).unwrap();
    }
    let in_session = |auth: u8, sid: u32| {
        let m = msg(0x00, 1, 0x01, &[]);
        let code = virtbmc::crypto::auth_code_v15(auth, &password, sid, &m, seq).unwrap();
        let mut p = vec![0x06, 0x00, 0xFF, 0x07, auth];
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&sid.to_le_bytes());
        p.extend_from_slice(&code);
        p.push(m.len() as u8);
        p.extend_from_slice(&m);
        p
    };
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let (c6, b6) = ((CLIENT_V6, CLIENT_PORT), (BMC_V6, BMC_PORT));
    let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
        (
            "chassis status, 1.5 MD5 session",
            v4(c4, b4, &in_session(2, sid_md5)),
            XDP_TX,
            5,
        ),
        (
            "chassis status, 1.5 password session",
            v4(c4, b4, &in_session(4, sid_pw)),
            XDP_TX,
            6,
        ),
        ("presence ping (v4)", v4(c4, b4, &ping(1)), XDP_TX, u32::MAX),
        (
            "auth caps 1.5 (v4)",
            v4(c4, b4, &v15(&auth_caps_req(0x8E, 4))),
            XDP_TX,
            u32::MAX,
        ),
        (
            "cipher suites 1.5 (v4)",
            v4(c4, b4, &v15(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
            u32::MAX,
        ),
        (
            "cipher suites RMCP+ (v4)",
            v4(c4, b4, &v20(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
            u32::MAX,
        ),
        (
            "cipher suites RMCP+ (v6)",
            v6(c6, b6, &v20(&cipher_req(0x0E, 0, 0x80))),
            XDP_TX,
            u32::MAX,
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
            u32::MAX,
        ),
        (
            "not a BMC port",
            v4(c4, (BMC_V4, 53), &ping(1)),
            XDP_PASS,
            u32::MAX,
        ),
    ];
    let mut report = format!(
        "\nXDP fast path, BPF_PROG_TEST_RUN, best of 5 x {} runs (ns per packet)\n",
        (repeat / 5).max(1)
    );
    report += &format!(
        "{:<40} {:>9} {:>9} {:>9}\n",
        "request", "total", "restore", "program"
    );
    for (name, frame, want, reset_slot) in cases {
        let mut bf = BenchFrame {
            len: frame.len() as u32,
            reset_slot,
            reset_window: window,
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
        // The machine is shared: the best of 5 rounds is the program's cost, not the noise.
        let round = (repeat / 5).max(1);
        let best = |p: &Xdp| {
            (0..5)
                .map(|_| per_run_ns(p, &frame, round).1)
                .fold(f64::MAX, f64::min)
        };
        let total = best(full);
        let base = best(restore);
        report += &format!(
            "{name:<40} {total:>9.1} {base:>9.1} {:>9.1}\n",
            total - base
        );
    }
    let _ = writeln!(std::io::stderr(), "{report}");
}
