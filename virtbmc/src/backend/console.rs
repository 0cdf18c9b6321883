//! A VM's serial line as the backend hands it to a Serial-over-LAN session: a stream of
//! events from the guest's side and a bounded queue of input for it. Both channels are
//! bounded, so a SOL client that stops reading stops the reading of the guest's console
//! (backpressure all the way to the VM), and a vanished one costs a fixed amount of memory.

use tokio::sync::mpsc;

/// Depth of each direction's queue: enough to keep a 115,200 bit/s line busy between two
/// wake-ups of the reader, small enough that a stalled reader holds little.
pub const QUEUE_DEPTH: usize = 64;

/// What the VM's side of the line reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The line is connected: at first, and again after the VM started anew (a restart or
    /// a power cycle replaces the running instance; its output follows on the same stream).
    Attached,
    /// Bytes the guest wrote, in order, none dropped.
    Output(Vec<u8>),
    /// There is no line right now (the VM is off or between instances). The stream stays
    /// open and reports `Attached` when a console is there again.
    NoConsole,
    /// Someone else opened the VM's console (a person's `virtctl console`), which closes
    /// ours. The stream ends after this event and does not try to take the console back.
    Displaced,
}

/// What the SOL client sends towards the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleInput {
    Bytes(Vec<u8>),
    /// A serial break, where the line can carry one; otherwise ignored.
    Break,
}

/// One open console. Dropping it (its `input` sender above all) closes the backend's side.
#[derive(Debug)]
pub struct Console {
    pub events: mpsc::Receiver<ConsoleEvent>,
    pub input: mpsc::Sender<ConsoleInput>,
}

impl Console {
    /// A pair of bounded queues: the `Console` for the SOL side and the backend's ends.
    pub fn channel() -> (Console, mpsc::Sender<ConsoleEvent>, mpsc::Receiver<ConsoleInput>) {
        let (event_tx, events) = mpsc::channel(QUEUE_DEPTH);
        let (input, input_rx) = mpsc::channel(QUEUE_DEPTH);
        (Console { events, input }, event_tx, input_rx)
    }

    /// A console for a backend that has none: it says so once, then the stream ends.
    pub fn unavailable() -> Console {
        let (console, events, _input) = Console::channel();
        // The queue is empty and holds QUEUE_DEPTH events, so this cannot fail.
        let _ = events.try_send(ConsoleEvent::NoConsole);
        console
    }
}
