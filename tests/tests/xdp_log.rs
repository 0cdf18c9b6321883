//! The program's aya-log records reach the `log` facade: the loader, started inside a tokio
//! runtime, keeps the EbpfLogger alive and drains it from an AsyncFd task. A malformed packet
//! to a BMC port is dropped with a debug record. Needs root and the object.

mod xdp_support;

use std::sync::Mutex;
use std::time::Duration;

use xdp_support::*;

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn xdp_debug_records_reach_log() {
    if skip("xdp_debug_records_reach_log") {
        return;
    }
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut fp = load_detached();
        fp.set_bmc(BMC_PORT, &state(false)).unwrap();
        let garbage = v4(
            (CLIENT_V4, CLIENT_PORT),
            (BMC_V4, BMC_PORT),
            &[0x05, 0, 0xFF, 0x07],
        );
        assert_eq!(fp.test_run(&garbage, 1).unwrap().action, XDP_DROP);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = CAPTURE
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("dropped malformed packet to BMC port 6230"));
            if seen {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no record: {:?}",
                CAPTURE.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(fp);
    });
}
