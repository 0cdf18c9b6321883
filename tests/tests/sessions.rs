//! Sessions that clients never close. Killed ipmitool processes and libraries that open a
//! session per call leave sessions behind; the agent must keep serving real clients without
//! waiting for those sessions' idle timeout. The abandoning clients are the crate's own
//! spec-written console, bound to twenty addresses of the client namespace; the clients that
//! must keep working are real ipmitool processes.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtbmc::console::{ConsoleError, V20Session, suite};
use virtbmc_e2e::{Bmc, Iface, Shell};

const PORT: u16 = common::PORT;

/// Runs `f` on a thread that has joined the network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: a valid namespace fd; setns moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

/// Extra client addresses: .100, .101, ... in the client's /24.
fn add_sources(bmc: &Bmc, n: u8) -> Vec<Ipv4Addr> {
    let o = bmc.net.client_ip.octets();
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(o[0], o[1], o[2], 100 + i);
            let cidr = format!("{ip}/24");
            let out = std::process::Command::new("ip")
                .args(["-n", &bmc.net.client, "addr", "add", &cidr, "dev", "vcli0"])
                .output()
                .expect("ip addr add");
            assert!(out.status.success(), "ip addr add {cidr}: {out:?}");
            ip
        })
        .collect()
}

/// Opens an RMCP+ session as `user` from `source`, waiting `wait` for each answer.
fn login(
    source: Ipv4Addr,
    bmc: SocketAddr,
    user: &str,
    password: &str,
    wait: Duration,
) -> (Result<V20Session, ConsoleError>, UdpSocket) {
    let sock = UdpSocket::bind((source, 0)).expect("bind source");
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    let mut exchange = |d: &[u8]| -> Option<Vec<u8>> {
        sock.send_to(d, bmc).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    };
    let s = V20Session::open(user, password, suite(17), 0x14, &mut exchange);
    (s, sock)
}

/// Opens an RMCP+ session from `source` and walks away from it (no Close Session).
fn abandon_one(source: Ipv4Addr, bmc: SocketAddr) -> bool {
    login(source, bmc, "admin", "password", Duration::from_millis(500))
        .0
        .is_ok()
}

fn metric(bmc: &Bmc, name: &str) -> u64 {
    let text = bmc.http_get("/metrics").expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// 200 sessions abandoned by 20 sources, at about a dozen a second (a fleet of killed
/// clients), fill the 16-slot table thirteen times over. A live ipmitool shell used between
/// them survives every one, and a new ipmitool login right after the last abandoned session
/// succeeds without waiting for any idle timeout (60 s here).
#[test]
fn abandoned_sessions_never_lock_out_a_live_or_a_new_client() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230,on").start();
    bmc.wait_power(common::VM, "on");
    let sources = add_sources(&bmc, 20);
    let target = SocketAddr::new(bmc.ip().parse().unwrap(), PORT);
    let mut live = Shell::open(&bmc, Iface::Lanplus, PORT);
    live.run("power status", "Chassis Power is on").unwrap();

    let opened = in_netns(&bmc.net.client, || {
        let mut opened = 0;
        for i in 0..200 {
            let started = Instant::now();
            if abandon_one(sources[i % 20], target) {
                opened += 1;
            }
            if i % 10 == 9 {
                live.run("power status", "Chassis Power is on")
                    .unwrap_or_else(|e| panic!("live session lost after {i}: {e}"));
            }
            // About a dozen abandoned sessions a second.
            std::thread::sleep(Duration::from_millis(80).saturating_sub(started.elapsed()));
        }
        opened
    });
    assert_eq!(opened, 200, "abandoned sessions opened");

    for iface in [Iface::Lanplus, Iface::Lan] {
        common::power_status_is(&bmc, iface, PORT, "on");
    }
    live.run("power status", "Chassis Power is on").unwrap();
    let reclaimed = metric(&bmc, "virtbmc_sessions_reclaimed_total");
    assert!(reclaimed >= 180, "{reclaimed} sessions reclaimed");
    live.close();
}

/// One source holds at most half of the table (8 of 16): past that it is refused while its
/// sessions are fresh, other sources are not, and the refusals leave one warning naming the
/// BMC and the source rather than one line each.
#[test]
fn one_source_holds_half_the_table_and_refusals_are_logged_once() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let sources = add_sources(&bmc, 1);
    let target = SocketAddr::new(bmc.ip().parse().unwrap(), PORT);
    let outcomes: Vec<bool> = in_netns(&bmc.net.client, || {
        (0..20).map(|_| abandon_one(sources[0], target)).collect()
    });
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        8,
        "the source's half of the table, then refusals: {outcomes:?}"
    );
    common::power_status_is(&bmc, Iface::Lanplus, PORT, "off");
    let log = bmc.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("new session refused"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("bmc=vm-0") && warnings[0].contains(&sources[0].to_string()),
        "{}",
        warnings[0]
    );
    assert_eq!(metric(&bmc, "virtbmc_sessions_refused_total"), 12);
}

/// `virtbmc_sessions_active` is the sessions open on every BMC together: an ipmitool shell
/// over IPMI 1.5 on one BMC and one over RMCP+ on another count two; each one's exit (a
/// Close Session) takes one off.
#[test]
fn active_sessions_gauge_follows_open_and_closed_sessions() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230,on").vm("vm-1=6231,on").start();
    bmc.wait_power("vm-0", "on");
    bmc.wait_power("vm-1", "on");
    let gauge = "virtbmc_sessions_active";
    assert_eq!(metric(&bmc, gauge), 0);

    let mut lan = Shell::open(&bmc, Iface::Lan, 6230);
    lan.run("power status", "Chassis Power is on").unwrap();
    let mut lanplus = Shell::open(&bmc, Iface::Lanplus, 6231);
    lanplus.run("power status", "Chassis Power is on").unwrap();
    wait_metric(&bmc, gauge, 2);

    lan.close();
    wait_metric(&bmc, gauge, 1);
    lanplus.close();
    wait_metric(&bmc, gauge, 0);
}

/// The agent moves its gauges right after it answers, so a client that has its answer may
/// read the previous value for a moment.
#[track_caller]
fn wait_metric(bmc: &Bmc, name: &str, want: u64) {
    let start = Instant::now();
    loop {
        let got = metric(bmc, name);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{name} is {got}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every RAKP2 for a real user is an offline-crackable hash of the password
/// (CVE-2013-4786). A flood from twenty sources asking for admin's RAKP2 gets fewer than 50
/// of them in 5 s, while the real admin (who logged in before the flood) keeps logging in
/// with ipmitool, and a script opening and closing sessions back to back from the same
/// address is never refused.
#[test]
fn a_rakp2_flood_yields_few_hashes_and_locks_nobody_out() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let sources = add_sources(&bmc, 20);
    let target = SocketAddr::new(bmc.ip().parse().unwrap(), PORT);
    let client = bmc.net.client_ip;
    common::power_status_is(&bmc, Iface::Lanplus, PORT, "off");

    let flooding = std::sync::atomic::AtomicBool::new(true);
    let (hashes, attempts, script) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            in_netns(&bmc.net.client, || {
                let (mut hashes, mut attempts) = (0, 0);
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end {
                    let source = sources[attempts % sources.len()];
                    let wait = Duration::from_millis(20);
                    // A wrong password: the RAKP2 arrives and fails the console's check,
                    // which is all an offline guesser needs.
                    if let Err(ConsoleError::BadProof) =
                        login(source, target, "admin", "guess", wait).0
                    {
                        hashes += 1;
                    }
                    attempts += 1;
                }
                flooding.store(false, std::sync::atomic::Ordering::SeqCst);
                (hashes, attempts)
            })
        });
        let script = scope.spawn(|| {
            in_netns(&bmc.net.client, || {
                let mut refused = Vec::new();
                let mut done = 0;
                while flooding.load(std::sync::atomic::Ordering::SeqCst) {
                    let (s, sock) =
                        login(client, target, "admin", "password", Duration::from_secs(2));
                    match s {
                        Ok(mut s) => {
                            let id = s.bmc_id.to_le_bytes();
                            let mut buf = [0u8; 1024];
                            sock.send_to(&s.request(0x06, 0x3C, &id), target).unwrap();
                            let _ = sock.recv_from(&mut buf);
                            done += 1;
                        }
                        Err(e) => refused.push(e),
                    }
                }
                (done, refused)
            })
        });
        for _ in 0..3 {
            common::power_status_is(&bmc, Iface::Lanplus, PORT, "off");
        }
        let (hashes, attempts) = flood.join().unwrap();
        (hashes, attempts, script.join().unwrap())
    });
    eprintln!(
        "flood: {attempts} attempts, {hashes} RAKP2; script: {} logins",
        script.0
    );
    assert!(attempts > 200, "the flood ran: {attempts} attempts");
    assert!(hashes < 50, "{hashes} RAKP2 for admin in 5 s");
    assert!(script.0 > 20, "the script kept logging in: {}", script.0);
    assert!(
        script.1.is_empty(),
        "the script was refused: {:?}",
        script.1
    );
}
