//! The embedded machines' serial line: what a small Linux guest prints on ttyS0. Each
//! boot (a power-on or a reset) prints its boot messages and a login prompt; typed
//! characters are echoed and Enter asks for a login again. Off, there is no line. Output
//! goes through the bounded event queue with `send().await`: a reader that stops reading
//! stops this task, and nothing piles up.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::console::{ConsoleEvent, ConsoleInput};
use super::embedded::Embedded;
use crate::engine::PowerState;

/// The guest side of one open console.
#[derive(Debug)]
pub struct SerialLine {
    name: String,
    /// The boot whose output the line shows; None while there is no line.
    boot: Option<u64>,
    /// Whether the consumer was told of the line's state at all yet.
    told: bool,
}

/// A wire's worth of one event: output is cut into pieces this long.
const CHUNK: usize = 64;

impl SerialLine {
    pub fn new(name: &str) -> SerialLine {
        SerialLine {
            name: name.to_string(),
            boot: None,
            told: false,
        }
    }

    fn prompt(&self) -> String {
        format!("{} login: ", self.name)
    }

    /// What a boot prints, from firmware to the login prompt.
    pub fn boot_text(&self, boot: u64) -> String {
        let n = &self.name;
        format!(
            "SeaBIOS (version virtbmc-embedded)\r\n\
             Booting from Hard Disk...\r\n\
             [    0.000000] Linux version 6.1.0-virtbmc (boot {boot} of {n})\r\n\
             [    0.000000] Command line: console=ttyS0,115200n8\r\n\
             [    0.412000] serial8250: ttyS0 at I/O 0x3f8 (irq = 4) is a 16550A\r\n\
             [    1.270000] Run /sbin/init as init process\r\n\
             \r\n\
             Debian GNU/Linux 12 {n} ttyS0\r\n\
             \r\n{}",
            self.prompt()
        )
    }

    /// The events the line owes its reader for the machine's state now.
    pub fn follow(&mut self, power: PowerState, boots: u64) -> Vec<ConsoleEvent> {
        let mut out = Vec::new();
        let first = !std::mem::replace(&mut self.told, true);
        match (power, self.boot) {
            (PowerState::On, Some(b)) if b == boots => {}
            (PowerState::On, _) => {
                out.push(ConsoleEvent::Attached);
                // A reader that comes to a running machine sees only what it prints from
                // now on, as on a real serial line.
                if !first {
                    chunks(&self.boot_text(boots), &mut out);
                }
                self.boot = Some(boots);
            }
            (_, Some(_)) => {
                out.push(ConsoleEvent::NoConsole);
                self.boot = None;
            }
            (_, None) if first => out.push(ConsoleEvent::NoConsole),
            (_, None) => {}
        }
        out
    }

    /// What the guest answers to typed input: the echo, and a prompt after Enter.
    pub fn typed(&self, bytes: &[u8]) -> Vec<u8> {
        if self.boot.is_none() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            match b {
                b'\r' | b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(self.prompt().as_bytes());
                }
                0x7F | 0x08 => out.extend_from_slice(b"\x08 \x08"),
                b => out.push(b),
            }
        }
        out
    }
}

fn chunks(text: &str, out: &mut Vec<ConsoleEvent>) {
    out.extend(
        text.as_bytes()
            .chunks(CHUNK)
            .map(|c| ConsoleEvent::Output(c.to_vec())),
    );
}

/// Runs the line until its reader drops the console.
pub async fn run(
    machines: Arc<Embedded>,
    mut line: SerialLine,
    events: mpsc::Sender<ConsoleEvent>,
    mut input: mpsc::Receiver<ConsoleInput>,
) {
    let mut changes = machines.watch();
    loop {
        let Some((power, boots)) = machines.boots(&line.name) else {
            let _ = events.send(ConsoleEvent::NoConsole).await;
            return;
        };
        for e in line.follow(power, boots) {
            if events.send(e).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = changes.recv() => match changed {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            typed = input.recv() => match typed {
                Some(ConsoleInput::Bytes(b)) => {
                    let echo = line.typed(&b);
                    if !echo.is_empty() && events.send(ConsoleEvent::Output(echo)).await.is_err() {
                        return;
                    }
                }
                // A break reaches a Linux guest as SysRq's lead-in; ours ignores it.
                Some(ConsoleInput::Break) => {}
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::embedded::EmbeddedBackend;
    use crate::engine::Action;
    use std::time::Duration;

    fn text(events: &[ConsoleEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ConsoleEvent::Output(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_boot_prints_to_the_prompt_and_off_has_no_line() {
        let mut l = SerialLine::new("vm-0");
        assert_eq!(l.follow(PowerState::On, 1), [ConsoleEvent::Attached]);
        assert_eq!(l.follow(PowerState::On, 1), []);
        assert_eq!(l.typed(b"root\r"), b"root\r\nvm-0 login: ");
        assert_eq!(l.follow(PowerState::Stopping, 1), [ConsoleEvent::NoConsole]);
        assert_eq!(l.typed(b"x"), b"");
        assert_eq!(l.follow(PowerState::Off, 1), []);
        let boot = l.follow(PowerState::On, 2);
        assert_eq!(boot[0], ConsoleEvent::Attached);
        let t = text(&boot);
        assert!(
            t.contains("(boot 2 of vm-0)") && t.ends_with("vm-0 login: "),
            "{t}"
        );
        // A reset: a new boot without a power-off.
        assert!(text(&l.follow(PowerState::On, 3)).contains("boot 3"));
        let mut off = SerialLine::new("b");
        assert_eq!(off.follow(PowerState::Off, 0), [ConsoleEvent::NoConsole]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_line_follows_power_and_echoes() {
        let e = Embedded::new(Duration::from_millis(100));
        e.add("a", true, [1; 16]);
        let b = EmbeddedBackend(e.clone());
        let mut c = b.open_console("a");
        assert_eq!(c.events.recv().await, Some(ConsoleEvent::Attached));
        c.input
            .send(ConsoleInput::Bytes(b"\r".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            c.events.recv().await,
            Some(ConsoleEvent::Output(b"\r\na login: ".to_vec()))
        );
        b.perform(
            "a",
            Action::PowerCycle,
            tokio::time::Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(c.events.recv().await, Some(ConsoleEvent::NoConsole));
        assert_eq!(c.events.recv().await, Some(ConsoleEvent::Attached));
        let mut seen = String::new();
        while !seen.ends_with("a login: ") {
            match c.events.recv().await {
                Some(ConsoleEvent::Output(o)) => seen.push_str(&String::from_utf8_lossy(&o)),
                other => panic!("{other:?}"),
            }
        }
        assert!(seen.contains("boot 1 of a"), "{seen}");
    }
}
