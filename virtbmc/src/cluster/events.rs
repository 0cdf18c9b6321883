//! Warning Events on the VM for refused and failed IPMI actions, aggregated as Kubernetes'
//! own components do, so that a retry loop against a VM KubeVirt keeps refusing writes one
//! Event with a growing `count` rather than a stream of objects.
//!
//! Modelled on client-go's `EventCorrelator` (`tools/record/events_cache.go`): occurrences
//! with the same source, involved object, reason and message form a series held in an
//! LRU-bounded cache (4096 keys); a repeat merge-patches the series' Event (`count`,
//! `lastTimestamp`) instead of creating one. Unlike client-go, a series ends after
//! [`WINDOW`] without a repeat, and the per-VM token bucket (client-go's spam filter: burst
//! 25, one more every 5 minutes) limits writes, not the record: an occurrence over the limit
//! is still counted, and the next write carries it.
//!
//! [`Correlator`] is the sans-IO part (time is an argument, decisions are values);
//! [`record`] is the thin driver that writes in the background, so the IPMI answer never
//! waits for the API server.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::Shared;

/// Series remembered at most (client-go's `maxLruCacheEntries`); the least recently seen
/// goes first. VMs whose write limit is tracked: the same.
pub const CACHE_KEYS: usize = 4096;
/// A repeat this long after the series' last occurrence starts a new Event.
pub const WINDOW: SignedDuration = SignedDuration::from_mins(10);
/// Writes a VM may have at once, and how often it earns one more (client-go's
/// `defaultSpamBurst` and `defaultSpamQPS` of 1/300).
pub const BURST: f64 = 25.0;
pub const REFILL: SignedDuration = SignedDuration::from_mins(5);

const COMPONENT: &str = "virtbmc";

/// What makes two occurrences the same Event. The type is always Warning, and the source is
/// the agent that owns the correlator (one per agent, in `Shared`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub namespace: String,
    pub vm: String,
    /// The VM's uid when the cache knows it: a VM deleted and created again under the same
    /// name is another object.
    pub uid: Option<String>,
    pub reason: String,
    pub message: String,
}

impl Key {
    /// The object the write limit applies to (client-go's spam key: source and object).
    fn object(&self) -> (String, String, Option<String>) {
        (self.namespace.clone(), self.vm.clone(), self.uid.clone())
    }
}

/// One write to make: create an Event (`name` is None) or patch the named one, so that it
/// holds this series.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: Key,
    pub name: Option<String>,
    pub count: i32,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// What became of an occurrence.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Write this now (and report the outcome to [`Correlator::completed`]).
    Write(Box<Write>),
    /// A write of this series is under way: its follow-up carries this occurrence.
    InFlight,
    /// The VM is over its write limit: counted, written with the series' next write.
    Limited,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created(String),
    Patched,
    /// The patched Event no longer exists (expired after the API server's `--event-ttl`,
    /// or deleted).
    Gone,
    Failed,
}

#[derive(Debug)]
struct Series {
    name: Option<String>,
    count: i32,
    first: Timestamp,
    last: Timestamp,
    /// The count the Event on the server holds.
    written: i32,
    /// A write is under way: the key is reserved, so two concurrent repeats never create
    /// two Events.
    in_flight: bool,
}

impl Series {
    fn write(&self, key: &Key) -> Write {
        Write {
            key: key.clone(),
            name: self.name.clone(),
            count: self.count,
            first: self.first,
            last: self.last,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    fn take(&mut self, now: Timestamp) -> bool {
        let earned = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned.max(0.0)).min(BURST);
        self.at = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// A map that forgets its least recently used entry beyond a capacity.
#[derive(Debug)]
struct Lru<K, V> {
    map: HashMap<K, (u64, V)>,
    tick: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.tick += 1;
        let (used, v) = self.map.get_mut(k)?;
        *used = self.tick;
        Some(v)
    }

    /// The entry for `k`, made by `new` if missing; room is made by dropping the least
    /// recently used entry that `keep` does not hold on to.
    fn entry(&mut self, k: &K, new: impl FnOnce() -> V, keep: impl Fn(&V) -> bool) -> &mut V {
        if !self.map.contains_key(k) && self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .filter(|(_, (_, v))| !keep(v))
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(o) = oldest {
                self.map.remove(&o);
            }
        }
        self.tick += 1;
        let e = self.map.entry(k.clone()).or_insert_with(|| (0, new()));
        e.0 = self.tick;
        &mut e.1
    }
}

/// The sans-IO core: series per key and write limits per VM.
#[derive(Debug)]
pub struct Correlator {
    series: Lru<Key, Series>,
    limits: Lru<(String, String, Option<String>), Bucket>,
}

impl Default for Correlator {
    fn default() -> Self {
        Correlator::new(CACHE_KEYS)
    }
}

impl Correlator {
    pub fn new(keys: usize) -> Correlator {
        Correlator {
            series: Lru::new(keys),
            limits: Lru::new(keys),
        }
    }

    /// An occurrence at `now`.
    pub fn observe(&mut self, key: Key, now: Timestamp) -> Fate {
        let fresh = || Series {
            name: None,
            count: 0,
            first: now,
            last: now,
            written: 0,
            in_flight: false,
        };
        let s = self.series.entry(&key, fresh, |s| s.in_flight);
        // A series in flight goes on whatever the gap: its Event is being written.
        if !s.in_flight && s.count > 0 && now.duration_since(s.last) > WINDOW {
            *s = fresh();
        }
        s.count = s.count.saturating_add(1);
        s.last = now;
        if s.in_flight {
            return Fate::InFlight;
        }
        self.issue(&key, now)
            .map_or(Fate::Limited, |w| Fate::Write(Box::new(w)))
    }

    /// A write has ended; if the series moved on meanwhile (or its Event is gone), the next
    /// write to make.
    pub fn completed(&mut self, w: &Write, outcome: Outcome, now: Timestamp) -> Option<Write> {
        let s = self.series.get_mut(&w.key)?;
        s.in_flight = false;
        match outcome {
            Outcome::Created(name) => s.name = Some(name),
            Outcome::Patched => {}
            // client-go creates the Event again, series and all; the patch's turn pays for it.
            Outcome::Gone if w.name.is_some() => {
                s.name = None;
                s.written = 0;
                s.in_flight = true;
                return Some(s.write(&w.key));
            }
            // Left to the next occurrence: no retry loop against a failing API server.
            Outcome::Gone | Outcome::Failed => return None,
        }
        s.written = w.count;
        if s.count > s.written {
            return self.issue(&w.key, now);
        }
        None
    }

    /// The series' write, if the VM's limit allows one now (then the key is reserved).
    fn issue(&mut self, key: &Key, now: Timestamp) -> Option<Write> {
        let full = || Bucket {
            tokens: BURST,
            at: now,
        };
        if !self.limits.entry(&key.object(), full, |_| false).take(now) {
            return None;
        }
        let s = self.series.get_mut(key)?;
        s.in_flight = true;
        Some(s.write(key))
    }
}

/// One per agent (in [`Shared`]), as client-go has one per broadcaster; shared with the
/// background writes.
pub type SharedCorrelator = Arc<Mutex<Correlator>>;

fn lock(c: &Mutex<Correlator>) -> MutexGuard<'_, Correlator> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a Warning Event on the VM: the correlator decides at once, the write happens in
/// the background, and a failure to write is only logged.
pub fn record(sh: &Shared, ns: &str, vm: &str, reason: &str, message: &str) {
    let key = Key {
        namespace: ns.to_string(),
        vm: vm.to_string(),
        uid: sh.stores.vm(ns, vm).and_then(|o| o.metadata.uid.clone()),
        reason: reason.to_string(),
        message: message.to_string(),
    };
    let fate = lock(&sh.events).observe(key, Timestamp::now());
    let m = &sh.metrics;
    match fate {
        Fate::Write(w) => {
            let counter = match w.name {
                None => &m.events_created,
                Some(_) => &m.events_aggregated,
            };
            counter.fetch_add(1, Relaxed);
            let api = Api::<Event>::namespaced(sh.client.clone(), ns);
            tokio::spawn(drive(sh.events.clone(), api, sh.opts.identity.clone(), *w));
        }
        Fate::InFlight => {
            m.events_aggregated.fetch_add(1, Relaxed);
        }
        Fate::Limited => {
            m.events_dropped.fetch_add(1, Relaxed);
            log::debug!("vm={ns}/{vm} event {reason}: over the VM's event rate, not written now");
        }
    }
}

/// A write under way. However it ends (an answer, or the task dropped), the correlator
/// hears of it once, so a key is never left reserved.
struct Pending(SharedCorrelator, Option<Write>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(w) = self.1.take() {
            lock(&self.0).completed(&w, Outcome::Failed, Timestamp::now());
        }
    }
}

/// `host`: this agent, the Events' `source.host` and `reportingInstance`.
async fn drive(c: SharedCorrelator, api: Api<Event>, host: String, w: Write) {
    let mut pending = Pending(c, Some(w));
    while let Some(w) = &pending.1 {
        let outcome = send(&api, &host, w).await;
        let w = pending.1.take().expect("held until here");
        pending.1 = lock(&pending.0).completed(&w, outcome, Timestamp::now());
    }
}

async fn send(api: &Api<Event>, host: &str, w: &Write) -> Outcome {
    let r = match &w.name {
        None => api
            .create(&PostParams::default(), &event(host, w))
            .await
            .map(|e| e.metadata.name.map_or(Outcome::Failed, Outcome::Created)),
        Some(name) => {
            let patch = json!({"count": w.count, "lastTimestamp": Time(w.last)});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(Outcome::Gone),
                r => r.map(|_| Outcome::Patched),
            }
        }
    };
    r.unwrap_or_else(|e| {
        let k = &w.key;
        log::warn!(
            "vm={}/{} event {} count={}: cannot record: {e}",
            k.namespace,
            k.vm,
            k.reason,
            w.count
        );
        Outcome::Failed
    })
}

fn event(host: &str, w: &Write) -> Event {
    let k = &w.key;
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", k.vm)),
            namespace: Some(k.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some("VirtualMachine".into()),
            name: Some(k.vm.clone()),
            namespace: Some(k.namespace.clone()),
            uid: k.uid.clone(),
            ..Default::default()
        },
        reason: Some(k.reason.clone()),
        message: Some(k.message.clone()),
        type_: Some("Warning".into()),
        count: Some(w.count),
        first_timestamp: Some(Time(w.first)),
        last_timestamp: Some(Time(w.last)),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(host.to_string()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(host.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vm: &str, reason: &str) -> Key {
        Key {
            namespace: "default".into(),
            vm: vm.into(),
            uid: Some(format!("uid-{vm}")),
            reason: reason.into(),
            message: format!("IPMI power reset (restart): {reason}"),
        }
    }

    /// An empty correlator and vm1's key for this reason.
    fn vm1(reason: &str) -> (Correlator, Key) {
        (Correlator::default(), key("vm1", reason))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn write(f: Fate) -> Write {
        match f {
            Fate::Write(w) => *w,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    /// Observes and completes at once, as a fast API server would.
    fn settle(c: &mut Correlator, k: &Key, now: Timestamp, name: &str) -> Write {
        let w = write(c.observe(k.clone(), now));
        let outcome = match w.name {
            None => Outcome::Created(name.into()),
            Some(_) => Outcome::Patched,
        };
        assert_eq!(c.completed(&w, outcome, now), None);
        w
    }

    #[test]
    fn repeats_patch_one_event_and_other_reasons_get_their_own() {
        let (mut c, k) = vm1("IPMIActionRefused");
        let w = settle(&mut c, &k, at(0), "vm1.abcde");
        assert_eq!((w.name, w.count, w.first, w.last), (None, 1, at(0), at(0)));
        for n in 2..=5 {
            let w = settle(&mut c, &k, at(n), "unused");
            assert_eq!(w.name.as_deref(), Some("vm1.abcde"));
            assert_eq!((w.count, w.first, w.last), (n as i32, at(0), at(n)));
        }
        let other = settle(
            &mut c,
            &key("vm1", "IPMIBootDeviceRefused"),
            at(6),
            "vm1.fghij",
        );
        assert_eq!((other.name, other.count), (None, 1));
        let mut msg = key("vm1", "IPMIActionRefused");
        msg.message.push_str(" (another)");
        assert_eq!(write(c.observe(msg, at(7))).name, None, "another message");
        assert_eq!(
            write(c.observe(key("vm2", "IPMIActionRefused"), at(8))).name,
            None
        );
        let w = settle(&mut c, &k, at(9), "unused");
        assert_eq!((w.name.as_deref(), w.count), (Some("vm1.abcde"), 6));
    }

    #[test]
    fn repeats_during_a_write_ride_on_one_follow_up() {
        let (mut c, k) = vm1("IPMIActionRefused");
        let first = write(c.observe(k.clone(), at(0)));
        assert_eq!(c.observe(k.clone(), at(1)), Fate::InFlight);
        assert_eq!(c.observe(k.clone(), at(2)), Fate::InFlight);
        let next = c
            .completed(&first, Outcome::Created("vm1.abcde".into()), at(2))
            .expect("a follow-up for the two repeats");
        assert_eq!(next.name.as_deref(), Some("vm1.abcde"));
        assert_eq!((next.count, next.first, next.last), (3, at(0), at(2)));
        assert_eq!(c.observe(k.clone(), at(3)), Fate::InFlight);
        let last = c.completed(&next, Outcome::Patched, at(3)).unwrap();
        assert_eq!(last.count, 4);
        assert_eq!(c.completed(&last, Outcome::Patched, at(3)), None);
    }

    #[test]
    fn a_quiet_window_starts_a_new_event() {
        let (mut c, k) = vm1("IPMIActionRefused");
        settle(&mut c, &k, at(0), "vm1.abcde");
        settle(&mut c, &k, at(600), "unused");
        let w = settle(&mut c, &k, at(1201), "vm1.fghij");
        assert_eq!((w.name, w.count, w.first), (None, 1, at(1201)));
        let w = settle(&mut c, &k, at(1202), "unused");
        assert_eq!((w.name.as_deref(), w.count), (Some("vm1.fghij"), 2));
    }

    #[test]
    fn a_vanished_event_is_created_again_with_its_series() {
        let (mut c, k) = vm1("IPMIActionRefused");
        settle(&mut c, &k, at(0), "vm1.abcde");
        let patch = write(c.observe(k.clone(), at(5)));
        let again = c.completed(&patch, Outcome::Gone, at(5)).unwrap();
        assert_eq!((&again.name, again.count, again.first), (&None, 2, at(0)));
        assert_eq!(
            c.observe(k.clone(), at(6)),
            Fate::InFlight,
            "still reserved"
        );
        // A 404 to a create is a failure, not a loop.
        assert_eq!(c.completed(&again, Outcome::Gone, at(6)), None);
        let w = write(c.observe(k, at(7)));
        assert_eq!((w.name, w.count), (None, 4));
    }

    #[test]
    fn a_failed_write_is_left_to_the_next_occurrence() {
        let (mut c, k) = vm1("IPMIActionFailed");
        let w = write(c.observe(k.clone(), at(0)));
        assert_eq!(c.observe(k.clone(), at(1)), Fate::InFlight);
        assert_eq!(c.completed(&w, Outcome::Failed, at(1)), None);
        let w = write(c.observe(k.clone(), at(2)));
        assert_eq!((&w.name, w.count, w.first), (&None, 3, at(0)));
        let next = c.completed(&w, Outcome::Created("vm1.abcde".into()), at(2));
        assert_eq!(next, None);
        let w = settle(&mut c, &k, at(3), "unused");
        assert_eq!(w.name.as_deref(), Some("vm1.abcde"));
    }

    #[test]
    fn each_vm_has_a_write_budget_and_limited_repeats_still_count() {
        let (mut c, k) = vm1("IPMIActionRefused");
        for n in 0..BURST as i64 {
            settle(&mut c, &k, at(n), "vm1.abcde");
        }
        let over = at(BURST as i64);
        assert_eq!(c.observe(k.clone(), over), Fate::Limited);
        let other_reason = key("vm1", "IPMIBootDeviceRefused");
        assert_eq!(c.observe(other_reason, over), Fate::Limited, "per VM");
        assert!(matches!(
            c.observe(key("vm2", "IPMIActionRefused"), over),
            Fate::Write(_)
        ));
        // Five minutes earn one write, which carries the limited repeats.
        let w = settle(&mut c, &k, over + REFILL, "unused");
        assert_eq!(w.count, BURST as i32 + 2);
        assert_eq!(c.observe(k.clone(), over + REFILL), Fate::Limited);
        // Still within the window of the last occurrence: the same Event.
        let w = settle(&mut c, &k, over + REFILL * 2, "unused");
        assert_eq!(
            (w.name.as_deref(), w.count),
            (Some("vm1.abcde"), BURST as i32 + 4)
        );
    }

    #[test]
    fn a_limited_follow_up_waits_for_the_next_occurrence() {
        let (mut c, k) = vm1("IPMIActionRefused");
        for n in 0..BURST as i64 - 1 {
            settle(&mut c, &k, at(n), "vm1.abcde");
        }
        let last = write(c.observe(k.clone(), at(30)));
        assert_eq!(c.observe(k.clone(), at(31)), Fate::InFlight);
        assert_eq!(c.completed(&last, Outcome::Patched, at(31)), None);
        let w = settle(&mut c, &k, at(31) + REFILL, "unused");
        assert_eq!(w.count, BURST as i32 + 2);
    }

    #[test]
    fn the_cache_forgets_the_least_recent_series_but_not_one_in_flight() {
        let mut c = Correlator::new(2);
        let (a, b, d) = (key("a", "R"), key("b", "R"), key("d", "R"));
        let wa = write(c.observe(a.clone(), at(0)));
        settle(&mut c, &b, at(1), "b.1");
        settle(&mut c, &d, at(2), "d.1");
        // `b` went, not `a`, whose create is under way.
        assert_eq!(c.observe(a.clone(), at(3)), Fate::InFlight);
        assert_eq!(
            c.completed(&wa, Outcome::Created("a.1".into()), at(3))
                .map(|w| w.count),
            Some(2)
        );
        assert_eq!(write(c.observe(b, at(4))).name, None, "forgotten");
    }
}
