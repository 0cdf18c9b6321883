//! The fixture itself: namespaces appear, carry traffic and disappear, also after a panic.
//! Needs no agent.

use virtbmc_e2e::{NetnsPair, skip_unless_ready};

const UDP: &str = env!("CARGO_BIN_EXE_virtbmc-e2e-udp");

#[test]
fn namespaces_carry_traffic_and_are_deleted_on_drop() {
    if skip_unless_ready("namespaces_carry_traffic_and_are_deleted_on_drop", &[]) {
        return;
    }
    let pair = NetnsPair::create();
    let (a, b) = (pair.bmc.clone(), pair.client.clone());
    assert!(NetnsPair::exists(&a) && NetnsPair::exists(&b));
    assert_ne!(pair.bmc_ip, pair.client_ip);
    assert!(
        pair.udp_echo_works(UDP),
        "no ping over the veth {a} <-> {b}"
    );
    drop(pair);
    assert!(
        !NetnsPair::exists(&a) && !NetnsPair::exists(&b),
        "namespaces left behind"
    );
}

#[test]
fn two_pairs_coexist_with_distinct_names_and_subnets() {
    if skip_unless_ready("two_pairs_coexist_with_distinct_names_and_subnets", &[]) {
        return;
    }
    let p1 = NetnsPair::create();
    let p2 = NetnsPair::create();
    assert_ne!(p1.bmc, p2.bmc);
    assert_ne!(p1.bmc_ip, p2.bmc_ip);
    assert!(p1.udp_echo_works(UDP) && p2.udp_echo_works(UDP));
}

#[test]
fn namespaces_are_deleted_when_the_test_panics() {
    if skip_unless_ready("namespaces_are_deleted_when_the_test_panics", &[]) {
        return;
    }
    let names = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let pair = NetnsPair::create();
        *names.lock().unwrap() = Some((pair.bmc.clone(), pair.client.clone()));
        panic!("deliberate panic while the namespaces exist");
    });
    assert!(result.is_err());
    let (a, b) = names.into_inner().unwrap().expect("pair was created");
    assert!(
        !NetnsPair::exists(&a) && !NetnsPair::exists(&b),
        "{a}/{b} survived a panic"
    );
}
