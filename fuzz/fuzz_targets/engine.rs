//! Feeds arbitrary datagrams to the wire parsers and to one BMC engine in sequence. The
//! input is split on 0xFE so the fuzzer can build multi-packet conversations (a session
//! opened by one datagram, attacked by the next). Any panic is a bug.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::entropy::TestEntropy;
use virtbmc::engine::{Bmc, Output, PowerState, VmView};
use virtbmc::wire::{lan15::Lan15Packet, lanplus::LanPlusPacket, message::Request, rmcp::RmcpHeader};

fuzz_target!(|data: &[u8]| {
    let mut cfg = BmcConfig::new(vec![User::new("admin", "password", Privilege::Admin).unwrap()]);
    cfg.allow_auth_none = data.first().is_some_and(|b| b & 1 == 1);
    cfg.cipher_suites = vec![1, 2, 3, 15, 16, 17];
    cfg.max_sessions = 2;
    let mut bmc = Bmc::with_entropy(Arc::new(cfg), Box::new(TestEntropy(1)));
    let mut vm = VmView { power: PowerState::On, boot: None, guid: [7; 16] };
    let mut now = Instant::now();
    let peer = "10.0.0.1:623".parse().unwrap();
    for datagram in data.split(|b| *b == 0xFE) {
        let _ = RmcpHeader::parse(datagram);
        let _ = Lan15Packet::parse(datagram);
        let _ = LanPlusPacket::parse(datagram, 12);
        let _ = Request::parse(datagram);
        match bmc.handle(now, peer, datagram, &vm) {
            Output::Action(_, _, pending) => {
                let _ = bmc.complete(pending, Ok(()));
                vm.power = if vm.power == PowerState::On { PowerState::Off } else { PowerState::On };
            }
            Output::Reply(r) => assert!(r.len() <= datagram.len().max(64) + 64),
            Output::Drop(_) => {}
        }
        now += Duration::from_millis(datagram.len() as u64 * 100);
        // Time passes between datagrams: the timers run, and their events drain.
        if bmc.poll_timeout(now).is_some_and(|t| t <= now) {
            bmc.handle_timeout(now);
        }
        while bmc.poll_event().is_some() {}
    }
});
