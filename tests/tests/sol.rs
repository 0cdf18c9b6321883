//! Serial-over-LAN with real clients under a terminal: `ipmitool -I lanplus sol activate`,
//! freeipmi's `ipmiconsole`, and OpenStack Ironic's console pipeline (socat serving
//! `ipmitool sol activate` to a TCP client). The embedded machine's serial line prints its
//! boot messages and a login prompt and echoes what is typed, so every byte seen on a
//! client's terminal went through the agent both ways.

mod common;

use std::time::Duration;
use virtbmc_e2e::{Bmc, Iface, Out, Terminal};

const PORT: u16 = common::PORT;
const VM: &str = common::VM;
const WAIT: Duration = Duration::from_secs(15);

fn agent_with_vm_on() -> Bmc {
    Bmc::builder().vm("vm-0=6230,on").start()
}

fn ipmitool_sol(bmc: &Bmc) -> Terminal {
    let (ip, port) = (bmc.ip(), PORT.to_string());
    bmc.terminal(&[
        "ipmitool", "-I", "lanplus", "-H", &ip, "-p", &port, "-U", "admin", "-P", "password",
        "sol", "activate",
    ])
}

fn ipmiconsole(bmc: &Bmc) -> Terminal {
    let host = format!("{}:{PORT}", bmc.ip());
    bmc.terminal(&["ipmiconsole", "-h", &host, "-u", "admin", "-p", "password"])
}

/// A `virtbmc_<name>` sample from `/metrics`.
fn metric(bmc: &Bmc, name: &str) -> u64 {
    let text = bmc.http_get("/metrics").expect("/metrics");
    let prefix = format!("virtbmc_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Get Payload Activation Status for SOL, as `ipmitool raw` prints it: capacity 1, then the
/// bitmap of active instances.
fn sol_active_bitmap(bmc: &Bmc) -> String {
    let out = bmc.admin(Iface::Lanplus, PORT, &["raw", "0x06", "0x4a", "0x01"]);
    out.assert_ok();
    out.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[track_caller]
fn wait_sol_active(bmc: &Bmc, active: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while metric(bmc, "sol_active") != active {
        assert!(
            std::time::Instant::now() < deadline,
            "virtbmc_sol_active never reached {active}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ipmitool_sol_shows_the_guest_echoes_input_survives_a_power_cycle_and_ends_with_tilde_dot() {
    ready_or_skip!("ipmitool", "python3");
    let bmc = agent_with_vm_on();
    let mut t = ipmitool_sol(&bmc);
    t.expect("[SOL Session operational.  Use ~? for help]", WAIT);
    assert_eq!(sol_active_bitmap(&bmc), "01 01 00", "instance 1 active");
    wait_sol_active(&bmc, 1);
    // A running guest prints nothing by itself; Enter brings its prompt.
    t.send("\r");
    t.expect("vm-0 login: ", WAIT);
    t.send("hello-sol\r");
    let echoed = t.expect("vm-0 login: ", WAIT);
    assert!(echoed.contains("hello-sol\r\n"), "{echoed:?}");
    assert!(metric(&bmc, "sol_bytes_to_guest_total") >= 11);

    // A power cycle from another client: the line goes, comes back with a new boot's
    // output, on the same SOL session.
    let before = bmc.vm(VM);
    bmc.admin(Iface::Lanplus, PORT, &["power", "cycle"])
        .assert_ok();
    let boot = t.expect("Debian GNU/Linux 12 vm-0 ttyS0", WAIT);
    assert!(
        boot.contains(&format!(
            "(boot {} of vm-0)",
            before.starts + before.resets + 1
        )),
        "{boot:?}"
    );
    t.expect("vm-0 login: ", WAIT);
    assert_eq!(bmc.vm(VM).starts, before.starts + 1);
    t.send("again\r");
    t.expect("again\r\nvm-0 login: ", WAIT);

    // ~. after a newline ends SOL and the client (Deactivate Payload).
    t.send("~.");
    let (code, _) = t.wait_exit(WAIT);
    assert_eq!(code, 0, "{}", t.transcript());
    assert_eq!(sol_active_bitmap(&bmc), "01 00 00");
    wait_sol_active(&bmc, 0);
    assert!(metric(&bmc, "sol_bytes_to_console_total") > 200);
    // A new activation works once the old one is gone.
    let mut again = ipmitool_sol(&bmc);
    again.expect("[SOL Session operational", WAIT);
    again.send("\r");
    again.expect("vm-0 login: ", WAIT);
}

#[test]
fn ipmitool_sol_deactivate_from_a_second_client_ends_the_first() {
    ready_or_skip!("ipmitool", "python3");
    let bmc = agent_with_vm_on();
    // Nothing active: Deactivate answers 80h, which ipmitool reports and Ironic accepts.
    let idle = bmc.admin(Iface::Lanplus, PORT, &["sol", "deactivate"]);
    assert!(
        idle.text().contains("SOL payload already de-activated"),
        "{idle}"
    );
    let mut first = ipmitool_sol(&bmc);
    first.expect("[SOL Session operational", WAIT);
    // A second activation while the first holds the one instance: 80h.
    let second = bmc.admin(Iface::Lanplus, PORT, &["sol", "activate"]);
    assert!(!second.ok(), "{second}");
    assert!(
        second
            .text()
            .contains("SOL payload already active on another session"),
        "{second}"
    );
    let out = bmc.admin(Iface::Lanplus, PORT, &["sol", "deactivate"]);
    out.assert_ok();
    assert_eq!(sol_active_bitmap(&bmc), "01 00 00");
    wait_sol_active(&bmc, 0);
    // The first client's typing reaches no guest any more.
    first.send("\rlost\r");
    std::thread::sleep(Duration::from_secs(2));
    first.send("~.");
    let (_, rest) = first.wait_exit(WAIT);
    assert!(!rest.contains("login:"), "{rest:?}");
    // A user who is neither the owner nor an administrator may not end another's SOL.
    let mut owner = ipmitool_sol(&bmc);
    owner.expect("[SOL Session operational", WAIT);
    let viewer = bmc.ipmitool(
        Iface::Lanplus,
        "viewer",
        "viewer",
        PORT,
        &["-L", "USER", "sol", "deactivate"],
    );
    assert!(!viewer.ok(), "{viewer}");
    assert_eq!(sol_active_bitmap(&bmc), "01 01 00");
}

#[test]
fn sol_info_reads_what_sol_set_wrote() {
    ready_or_skip!("ipmitool", "python3");
    let bmc = agent_with_vm_on();
    let info = |bmc: &Bmc| bmc.admin(Iface::Lanplus, PORT, &["sol", "info"]);
    let out = info(&bmc);
    out.assert_ok();
    for (label, want) in [
        ("Set in progress", "set-complete"),
        ("Enabled", "true"),
        ("Force Encryption", "true"),
        ("Force Authentication", "true"),
        ("Privilege Level", "USER"),
        ("Character Accumulate Level (ms)", "60"),
        ("Character Send Threshold", "1"),
        ("Retry Count", "7"),
        ("Retry Interval (ms)", "100"),
        ("Volatile Bit Rate (kbps)", "115.2"),
        ("Non-Volatile Bit Rate (kbps)", "115.2"),
        ("Payload Channel", "1 (0x01)"),
        ("Payload Port", "6230"),
    ] {
        assert_eq!(
            common::field(&out, label).as_deref(),
            Some(want),
            "{label}:\n{out}"
        );
    }
    for (param, value) in [
        ("retry-interval", "50"),
        ("retry-count", "3"),
        ("character-send-threshold", "10"),
        ("character-accumulate-level", "20"),
        ("volatile-bit-rate", "38.4"),
        ("privilege-level", "operator"),
    ] {
        bmc.admin(Iface::Lanplus, PORT, &["sol", "set", param, value])
            .assert_ok();
    }
    let out = info(&bmc);
    for (label, want) in [
        ("Retry Interval (ms)", "500"),
        ("Retry Count", "3"),
        ("Character Send Threshold", "10"),
        ("Character Accumulate Level (ms)", "100"),
        ("Volatile Bit Rate (kbps)", "38.4"),
        ("Privilege Level", "OPERATOR"),
        ("Set in progress", "set-complete"),
    ] {
        assert_eq!(
            common::field(&out, label).as_deref(),
            Some(want),
            "{label}:\n{out}"
        );
    }
    // A User may read but not write, nor activate below the privilege SOL now needs.
    let viewer = |args: &[&str]| {
        bmc.ipmitool(
            Iface::Lanplus,
            "viewer",
            "viewer",
            PORT,
            &[&["-L", "USER"], args].concat(),
        )
    };
    viewer(&["sol", "info"]).assert_ok();
    let set = viewer(&["sol", "set", "retry-count", "5"]);
    assert!(
        !set.ok() && set.text().contains("Insufficient privilege"),
        "{set}"
    );
    let act = viewer(&["sol", "activate"]);
    assert!(!act.ok() && !act.text().contains("operational"), "{act}");
    assert_eq!(
        common::field(&info(&bmc), "Retry Count").as_deref(),
        Some("3")
    );
    // Disabled, SOL cannot be activated.
    bmc.admin(Iface::Lanplus, PORT, &["sol", "set", "enabled", "false"])
        .assert_ok();
    let off = bmc.admin(Iface::Lanplus, PORT, &["sol", "activate"]);
    assert!(
        !off.ok() && off.text().contains("SOL payload disabled"),
        "{off}"
    );
    assert_eq!(
        common::field(&info(&bmc), "Enabled").as_deref(),
        Some("false")
    );
}

#[test]
fn ipmiconsole_steals_the_session_and_follows_power_off_and_on() {
    ready_or_skip!("ipmiconsole", "ipmitool", "python3");
    let bmc = agent_with_vm_on();
    let mut first = ipmiconsole(&bmc);
    first.expect("[SOL established]", WAIT);
    first.send("\r");
    first.expect("vm-0 login: ", WAIT);
    // A second ipmiconsole deactivates the first's instance and activates its own; the
    // first hears "deactivating" and leaves.
    let mut second = ipmiconsole(&bmc);
    second.expect("[SOL established]", WAIT);
    first.expect("[SOL session stolen]", WAIT);
    // It leaves on its own (exit code 0: it ended as it was told to).
    first.wait_exit(WAIT);
    second.send("root\r");
    second.expect("root\r\nvm-0 login: ", WAIT);

    bmc.admin(Iface::Lanplus, PORT, &["power", "off"])
        .assert_ok();
    bmc.wait_power(VM, "off");
    bmc.admin(Iface::Lanplus, PORT, &["power", "on"])
        .assert_ok();
    second.expect("Linux version 6.1.0-virtbmc", WAIT);
    second.expect("vm-0 login: ", WAIT);
    second.send("&.");
    let (code, _) = second.wait_exit(WAIT);
    assert_eq!(code, 0, "{}", second.transcript());
    assert_eq!(sol_active_bitmap(&bmc), "01 00 00");
    assert!(metric(&bmc, "sol_activations_total") >= 2);
}

#[test]
fn ironic_socat_console_serves_the_guest_over_tcp() {
    ready_or_skip!("ipmitool", "socat", "python3");
    let bmc = agent_with_vm_on();
    let pwfile = std::env::temp_dir().join(format!("virtbmc-sol-pw-{}", std::process::id()));
    std::fs::write(&pwfile, "password\n").expect("password file");
    let ipmitool = format!(
        "ipmitool -I lanplus -H {} -L ADMINISTRATOR -p {PORT} -U admin -f {} sol activate",
        bmc.ip(),
        pwfile.display()
    );
    // Ironic first ends any SOL left from before, in a session of its own (exit 0 or 1).
    let pre: Out = bmc.client(&[
        "sh",
        "-c",
        &ipmitool.replace("sol activate", "sol deactivate"),
    ]);
    assert!(matches!(pre.code, Some(0 | 1)), "{pre}");
    let listen = "TCP4-LISTEN:7300,bind=127.0.0.1,reuseaddr,fork,max-children=1".to_string();
    let exec = format!("EXEC:{ipmitool},pty,stderr");
    let mut socat = bmc.spawn_client(&["socat", "-T600", &listen, &exec]);
    let mut tcp = None;
    for _ in 0..50 {
        let mut t = bmc.terminal(&["socat", "-,raw,echo=0", "TCP4:127.0.0.1:7300"]);
        if t.try_expect("[SOL Session operational", WAIT).is_ok() {
            tcp = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tcp = tcp.expect("socat never served a console");
    tcp.send("\r");
    tcp.expect("vm-0 login: ", WAIT);
    tcp.send("ironic\r");
    tcp.expect("ironic\r\nvm-0 login: ", WAIT);
    assert_eq!(sol_active_bitmap(&bmc), "01 01 00");
    drop(tcp);
    let _ = socat.kill();
    let _ = socat.wait();
    let _ = std::fs::remove_file(&pwfile);
}

#[test]
fn a_stalled_then_vanished_client_costs_other_vms_nothing_and_its_sol_ends_with_its_session() {
    ready_or_skip!("ipmitool", "python3");
    let bmc = Bmc::builder()
        .vm("vm-0=6230,on")
        .vm("vm-1=6231,on")
        .arg("--session-timeout")
        .arg("5")
        .start();
    let mut t = ipmitool_sol(&bmc);
    t.expect("[SOL Session operational", WAIT);
    t.send("\r");
    t.expect("vm-0 login: ", WAIT);
    // The client stops reading and acknowledging; the guest keeps printing (two boots).
    t.signal(libc::SIGSTOP);
    for _ in 0..2 {
        let before = bmc.vm(VM);
        bmc.admin(Iface::Lanplus, PORT, &["power", "cycle"])
            .assert_ok();
        bmc.wait_vm(VM, "booted again", WAIT, |v| {
            v.starts == before.starts + 1 && v.power == "on"
        });
        // Another VM's BMC answers as ever.
        let other = bmc.admin(Iface::Lanplus, 6231, &["power", "status"]);
        other.assert_ok().assert_stdout_has("Chassis Power is on");
        assert!(other.elapsed < Duration::from_secs(3), "{other}");
    }
    // Unacknowledged packets were resent, then given up (counted); with no packet from the
    // client its session expires and SOL with it.
    wait_sol_active(&bmc, 0);
    assert!(metric(&bmc, "sol_retransmissions_total") > 0);
    assert!(metric(&bmc, "sol_bytes_abandoned_total") > 0);
    assert_eq!(sol_active_bitmap(&bmc), "01 00 00");
    t.signal(libc::SIGKILL);
    drop(t);
    // The instance is free for the next client.
    let mut next = ipmitool_sol(&bmc);
    next.expect("[SOL Session operational", WAIT);
    next.send("\r");
    next.expect("vm-0 login: ", WAIT);
}
