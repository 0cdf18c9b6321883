//! One active Serial-over-LAN instance (IPMI 2.0 §15): the packet state machine between the
//! console that activated it and the VM's serial line. Sans-IO like the rest of the engine:
//! packets in, packets out, time as an argument.
//!
//! Towards the console one data packet is in flight at a time (§15.9: a packet is resent
//! under the same sequence number until acknowledged); characters from the guest wait in a
//! bounded buffer, so the driver reads the guest's console only as fast as the console
//! acknowledges (backpressure instead of loss).

use std::collections::VecDeque;
use std::time::Instant;

use super::sol_config::SolConfig;
use crate::wire::sol::{SolPacket, op, status};

/// Largest SOL payload either side sends (header included), answered in Activate Payload
/// (§24.1); freeipmi refuses sizes outside 5..=259.
pub const PAYLOAD_SIZE: u16 = 255;
/// Characters per packet.
pub const MAX_CHARS: usize = PAYLOAD_SIZE as usize - crate::wire::sol::HEADER_LEN;
/// Guest characters held for the console, besides the packet in flight.
pub const BUFFER: usize = 1024;

/// A packet sent and not yet acknowledged.
#[derive(Debug, Clone)]
struct InFlight {
    seq: u8,
    data: Vec<u8>,
    status: u8,
    deadline: Instant,
    retries_left: u8,
}

/// What the instance asks the driver to do for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToGuest {
    Bytes(Vec<u8>),
    Break,
}

/// An owned SOL packet for the BMC to seal into the owner's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u8,
    pub ack: u8,
    pub accepted: u8,
    pub status: u8,
    pub data: Vec<u8>,
}

impl Outgoing {
    pub fn emit(&self, out: &mut Vec<u8>) {
        SolPacket {
            seq: self.seq,
            ack: self.ack,
            accepted: self.accepted,
            op: self.status,
            data: &self.data,
        }
        .emit(out)
    }
}

/// Counters the BMC adds to its stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SolCounts {
    pub to_guest: u64,
    pub to_console: u64,
    pub retransmissions: u64,
    /// Characters given up after the last retry went unacknowledged.
    pub abandoned: u64,
}

#[derive(Debug)]
pub struct SolLink {
    /// The session that activated the payload.
    pub owner: u32,
    console: bool,
    /// The console must hear of a change of `console` even when no character follows.
    status_changed: bool,
    buffer: VecDeque<u8>,
    /// When the oldest character in `buffer` arrived: the accumulate interval counts from it.
    oldest: Option<Instant>,
    next_seq: u8,
    in_flight: Option<InFlight>,
    /// The console's last packet with characters: its sequence number and how many were
    /// accepted, so that a retransmission is acknowledged again and not delivered twice.
    last_inbound: Option<(u8, u8)>,
    /// How many more inputs (a run of characters, or a break) the guest's side takes now,
    /// as the driver last said: a packet that does not fit goes unacknowledged, so the
    /// console sends it again later instead of the input being lost.
    guest_room: usize,
    pub counts: SolCounts,
}

impl SolLink {
    pub fn new(owner: u32, console: bool) -> SolLink {
        SolLink {
            owner,
            console,
            status_changed: false,
            buffer: VecDeque::new(),
            oldest: None,
            next_seq: 1,
            in_flight: None,
            last_inbound: None,
            guest_room: usize::MAX,
            counts: SolCounts::default(),
        }
    }

    fn status(&self) -> u8 {
        if self.console {
            0
        } else {
            status::TRANSFER_UNAVAILABLE
        }
    }

    fn take_seq(&mut self) -> u8 {
        let seq = self.next_seq;
        self.next_seq = if seq >= 15 { 1 } else { seq + 1 };
        seq
    }

    /// How many guest characters the instance takes now.
    pub fn room(&self) -> usize {
        BUFFER - self.buffer.len()
    }

    /// Takes up to [`SolLink::room`] characters from the guest; returns how many it took.
    pub fn from_guest(&mut self, now: Instant, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        if n > 0 && self.buffer.is_empty() {
            self.oldest = Some(now);
        }
        self.buffer.extend(&bytes[..n]);
        n
    }

    /// How many inputs the guest's side takes now (see [`SolLink::on_packet`]).
    pub fn set_guest_room(&mut self, inputs: usize) {
        self.guest_room = inputs;
    }

    /// The guest's serial line came or went.
    pub fn set_console(&mut self, present: bool) {
        if self.console != present {
            self.console = present;
            self.status_changed = true;
        }
    }

    /// A packet from the owner's console: what to answer at once (an ACK), and what goes to
    /// the guest.
    pub fn on_packet(&mut self, now: Instant, p: &SolPacket) -> (Option<Outgoing>, Vec<ToGuest>) {
        let acked = p.ack != 0 && self.in_flight.as_ref().is_some_and(|f| f.seq == p.ack);
        // A NACK means the console cannot take characters now: the retry timer resends.
        if acked
            && p.op & op::NACK == 0
            && let Some(f) = self.in_flight.take()
        {
            let taken = usize::from(p.accepted).min(f.data.len());
            // §15.9: characters not accepted go again, under a new sequence number.
            for &b in f.data[taken..].iter().rev() {
                self.buffer.push_front(b);
            }
            if taken < f.data.len() {
                self.oldest.get_or_insert(now);
            }
        }
        let mut guest = Vec::new();
        if p.seq == 0 {
            return (None, guest);
        }
        let inputs = usize::from(p.op & op::BREAK != 0) + usize::from(!p.data.is_empty());
        let accepted = match self.last_inbound {
            Some((seq, accepted)) if seq == p.seq => accepted,
            _ if !self.console => 0,
            // The guest is not reading its input: no acknowledgement, so the console keeps
            // the characters and resends them on its retry interval (a NACK would make
            // ipmitool give them up).
            _ if inputs > self.guest_room => return (None, guest),
            _ => {
                self.guest_room -= inputs;
                if p.op & op::BREAK != 0 {
                    guest.push(ToGuest::Break);
                }
                if !p.data.is_empty() {
                    self.counts.to_guest += p.data.len() as u64;
                    guest.push(ToGuest::Bytes(p.data.to_vec()));
                }
                p.data.len().min(255) as u8
            }
        };
        if self.console {
            self.last_inbound = Some((p.seq, accepted));
        }
        let mut st = self.status();
        if !self.console && !p.data.is_empty() {
            st |= status::NACK;
        }
        let ack = Outgoing {
            seq: 0,
            ack: p.seq,
            accepted,
            status: st,
            data: Vec::new(),
        };
        (Some(ack), guest)
    }

    /// The next data packet, when nothing is in flight and characters are due (the send
    /// threshold reached or the accumulate interval over) or the line's status changed.
    pub fn poll_send(&mut self, now: Instant, cfg: &SolConfig) -> Option<Outgoing> {
        if self.in_flight.is_some() {
            return None;
        }
        let due = match self.oldest {
            Some(t) if !self.buffer.is_empty() => {
                self.buffer.len() >= usize::from(cfg.send_threshold.max(1))
                    || now >= t + cfg.accumulate()
            }
            _ => false,
        };
        if !due && !self.status_changed {
            return None;
        }
        self.status_changed = false;
        let n = self.buffer.len().min(MAX_CHARS);
        let data: Vec<u8> = self.buffer.drain(..n).collect();
        self.oldest = (!self.buffer.is_empty()).then_some(now);
        self.counts.to_console += data.len() as u64;
        let seq = self.take_seq();
        let f = InFlight {
            seq,
            data,
            status: self.status(),
            deadline: now + cfg.retry_interval(),
            retries_left: cfg.retry_count & 0x07,
        };
        let out = Outgoing {
            seq,
            ack: 0,
            accepted: 0,
            status: f.status,
            data: f.data.clone(),
        };
        self.in_flight = Some(f);
        Some(out)
    }

    /// When [`SolLink::handle_timeout`] or [`SolLink::poll_send`] has work next.
    pub fn poll_timeout(&self, cfg: &SolConfig) -> Option<Instant> {
        match (&self.in_flight, self.oldest) {
            (Some(f), _) => Some(f.deadline),
            (None, Some(t)) if !self.buffer.is_empty() => Some(t + cfg.accumulate()),
            _ => None,
        }
    }

    /// Resends the packet in flight when its retry interval is over; after the last retry
    /// its characters are given up (counted), and the next ones may go.
    pub fn handle_timeout(&mut self, now: Instant, cfg: &SolConfig) -> Option<Outgoing> {
        let f = self.in_flight.as_mut()?;
        if now < f.deadline {
            return None;
        }
        if f.retries_left == 0 {
            let f = self.in_flight.take()?;
            self.counts.abandoned += f.data.len() as u64;
            return None;
        }
        f.retries_left -= 1;
        f.deadline = now + cfg.retry_interval();
        self.counts.retransmissions += 1;
        Some(Outgoing {
            seq: f.seq,
            ack: 0,
            accepted: 0,
            status: f.status,
            data: f.data.clone(),
        })
    }

    /// The last packet the owner gets: SOL is deactivating (another session took or ended
    /// it). It is not resent: the payload is gone either way.
    pub fn farewell(&mut self) -> Outgoing {
        Outgoing {
            seq: self.take_seq(),
            ack: 0,
            accepted: 0,
            status: status::DEACTIVATING,
            data: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(seq: u8, ack: u8, accepted: u8, op: u8, data: &[u8]) -> SolPacket<'_> {
        SolPacket {
            seq,
            ack,
            accepted,
            op,
            data,
        }
    }

    #[test]
    fn guest_characters_wait_for_the_threshold_or_the_interval() {
        // As shipped, a character goes at once.
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        l.from_guest(t, b"a");
        assert_eq!(l.poll_send(t, &SolConfig::default()).unwrap().data, b"a");
        let cfg = SolConfig {
            send_threshold: 96,
            ..SolConfig::default()
        };
        let mut l = SolLink::new(7, true);
        assert_eq!(l.from_guest(t, b"boot"), 4);
        assert_eq!(l.poll_send(t, &cfg), None, "under the threshold");
        assert_eq!(l.poll_timeout(&cfg), Some(t + Duration::from_millis(60)));
        let p = l.poll_send(t + Duration::from_millis(60), &cfg).unwrap();
        assert_eq!(
            (p.seq, p.ack, p.status, &p.data[..]),
            (1, 0, 0, &b"boot"[..])
        );
        // 96 characters go at once.
        let mut l = SolLink::new(7, true);
        l.from_guest(t, &[b'x'; 96]);
        assert_eq!(l.poll_send(t, &cfg).unwrap().data.len(), 96);
    }

    #[test]
    fn one_packet_in_flight_acks_partial_acks_and_sequence_wrap() {
        let cfg = SolConfig::default();
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        let mut seqs = Vec::new();
        for i in 0..16u8 {
            l.from_guest(t, &[b'a' + i; 100]);
            let p = l.poll_send(t, &cfg).unwrap();
            assert_eq!(l.poll_send(t, &cfg), None, "one in flight");
            seqs.push(p.seq);
            let (ack, guest) = l.on_packet(t, &pkt(0, p.seq, 100, 0, &[]));
            assert_eq!((ack, guest), (None, vec![]));
        }
        assert_eq!(seqs[..3], [1, 2, 3]);
        assert_eq!(seqs[14..], [15, 1], "1..15, then 1 again");
        // A partial ACK: the rest goes again under the next number.
        l.from_guest(t, b"hello world!");
        let p = l.poll_send(t + Duration::from_secs(1), &cfg).unwrap();
        l.on_packet(t, &pkt(0, p.seq, 5, 0, &[]));
        let q = l.poll_send(t + Duration::from_secs(1), &cfg).unwrap();
        assert_eq!((q.seq, &q.data[..]), (p.seq + 1, &b" world!"[..]));
        // An ACK for another number changes nothing.
        l.on_packet(t, &pkt(0, p.seq, 5, 0, &[]));
        assert_eq!(l.poll_send(t + Duration::from_secs(1), &cfg), None);
        assert_eq!(l.counts.to_console, 16 * 100 + 12 + 7);
    }

    #[test]
    fn unacknowledged_data_is_resent_then_given_up() {
        let cfg = SolConfig {
            retry_count: 2,
            ..SolConfig::default()
        };
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        l.from_guest(t, &[b'z'; 200]);
        let p = l.poll_send(t, &cfg).unwrap();
        assert_eq!(p.data.len(), 200);
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(l.poll_timeout(&cfg), Some(ms(100)));
        assert_eq!(l.handle_timeout(ms(99), &cfg), None);
        assert_eq!(l.handle_timeout(ms(100), &cfg), Some(p.clone()));
        assert_eq!(l.handle_timeout(ms(200), &cfg), Some(p.clone()));
        assert_eq!(l.handle_timeout(ms(300), &cfg), None, "retries spent");
        assert_eq!((l.counts.retransmissions, l.counts.abandoned), (2, 200));
        // A NACK keeps the packet for the retry timer.
        l.from_guest(ms(300), b"q");
        let p = l.poll_send(ms(400), &cfg).unwrap();
        l.on_packet(ms(400), &pkt(0, p.seq, 0, op::NACK, &[]));
        assert_eq!(l.handle_timeout(ms(500), &cfg), Some(p));
    }

    #[test]
    fn the_buffer_is_bounded_and_takes_only_its_room() {
        let cfg = SolConfig::default();
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        assert_eq!(l.from_guest(t, &[0; 3000]), BUFFER);
        assert_eq!(l.room(), 0);
        assert_eq!(l.from_guest(t, b"more"), 0);
        assert_eq!(l.poll_send(t, &cfg).unwrap().data.len(), MAX_CHARS);
        assert_eq!(l.room(), MAX_CHARS);
    }

    #[test]
    fn console_characters_are_acked_once_and_delivered_once() {
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        let (ack, guest) = l.on_packet(t, &pkt(3, 0, 0, op::BREAK, b"ls\r"));
        let ack = ack.unwrap();
        assert_eq!((ack.seq, ack.ack, ack.accepted, ack.status), (0, 3, 3, 0));
        assert_eq!(guest, [ToGuest::Break, ToGuest::Bytes(b"ls\r".to_vec())]);
        let (again, guest) = l.on_packet(t, &pkt(3, 0, 0, 0, b"ls\r"));
        assert_eq!(
            (again.unwrap().accepted, guest),
            (3, vec![]),
            "a retransmission"
        );
        // A keepalive: no characters, still acknowledged.
        let (ack, guest) = l.on_packet(t, &pkt(4, 0, 0, 0, &[]));
        assert_eq!((ack.unwrap().ack, guest), (4, vec![]));
        assert_eq!(l.counts.to_guest, 3);
    }

    #[test]
    fn without_a_console_characters_are_refused_and_the_console_told() {
        let cfg = SolConfig::default();
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        l.set_console(false);
        let p = l.poll_send(t, &cfg).unwrap();
        assert_eq!(
            (p.seq, p.status, p.data.len()),
            (1, status::TRANSFER_UNAVAILABLE, 0)
        );
        let (ack, guest) = l.on_packet(t, &pkt(5, 1, 0, 0, b"x"));
        let ack = ack.unwrap();
        assert_eq!(
            (ack.accepted, ack.status, guest),
            (0, status::TRANSFER_UNAVAILABLE | status::NACK, vec![])
        );
        l.set_console(true);
        let p = l.poll_send(t, &cfg).unwrap();
        assert_eq!((p.seq, p.status), (2, 0), "the line is back");
        let (ack, guest) = l.on_packet(t, &pkt(5, 0, 0, 0, b"x"));
        assert_eq!((ack.unwrap().accepted, guest.len()), (1, 1));
        assert_eq!(l.farewell().status, status::DEACTIVATING);
    }

    #[test]
    fn input_the_guest_cannot_take_yet_goes_unacknowledged_and_comes_again() {
        let t = Instant::now();
        let mut l = SolLink::new(7, true);
        l.set_guest_room(1);
        let (ack, guest) = l.on_packet(t, &pkt(1, 0, 0, 0, b"a"));
        assert_eq!((ack.unwrap().accepted, guest.len()), (1, 1));
        // The one slot is used: the next packet is neither taken nor acknowledged.
        assert_eq!(l.on_packet(t, &pkt(2, 0, 0, 0, b"b")), (None, vec![]));
        // A break with characters needs two slots.
        l.set_guest_room(1);
        assert_eq!(
            l.on_packet(t, &pkt(2, 0, 0, op::BREAK, b"b")),
            (None, vec![])
        );
        // Once the guest reads, the console's retransmission (same sequence number) is taken.
        l.set_guest_room(2);
        let (ack, guest) = l.on_packet(t, &pkt(2, 0, 0, op::BREAK, b"b"));
        assert_eq!(
            (ack.unwrap().accepted, guest),
            (1, vec![ToGuest::Break, ToGuest::Bytes(b"b".to_vec())])
        );
        // A keepalive needs no room.
        assert_eq!(l.on_packet(t, &pkt(3, 0, 0, 0, &[])).0.unwrap().ack, 3);
        assert_eq!(l.counts.to_guest, 2);
    }
}
