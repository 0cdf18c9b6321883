//! Fault injection: the next N requests matching a method and a path pattern (optionally
//! after letting the first few through) get a chosen error, a hang, or a delay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a matching request gets instead of its normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// A Status error with this HTTP code (404, 409, 410, 422, 429, 500, 503, 504, ...), with
    /// the reason the apiserver uses for it. 429 and 503 carry `Retry-After: 1`.
    Status(u16),
    /// Never answer: the connection stays open and silent until the client gives up or the
    /// server stops (a request timeout).
    Hang,
    /// Answer normally after this delay.
    Delay(Duration),
    /// Close the connection without an answer.
    Disconnect,
}

/// A fault rule. Build with [`Fault::on`].
#[derive(Clone, Debug)]
pub struct Fault {
    /// "GET", "PUT", ..., or "*" for any.
    pub method: String,
    /// Matches when the request's `path?query` contains this text (e.g.
    /// "/virtualmachines/vm1/start" or "watch=true").
    pub contains: String,
    pub action: FaultAction,
    /// How many requests it still applies to.
    pub remaining: usize,
    /// How many matching requests still pass untouched before it applies.
    pub skip: usize,
}

impl Fault {
    /// A fault for the next request whose method is `method` ("*" for any) and whose
    /// `path?query` contains `contains`.
    pub fn on(method: &str, contains: &str) -> Self {
        Fault {
            method: method.to_ascii_uppercase(),
            contains: contains.to_string(),
            action: FaultAction::Status(500),
            remaining: 1,
            skip: 0,
        }
    }

    /// Let the first `n` matching requests through untouched (each rule counts every request
    /// it matches, whichever rule acts on it): "the third GET of this VM hangs".
    pub fn after(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    pub fn status(mut self, code: u16) -> Self {
        self.action = FaultAction::Status(code);
        self
    }

    pub fn hang(mut self) -> Self {
        self.action = FaultAction::Hang;
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.action = FaultAction::Delay(d);
        self
    }

    pub fn disconnect(mut self) -> Self {
        self.action = FaultAction::Disconnect;
        self
    }

    /// Apply to the next `n` matching requests (default 1).
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = n;
        self
    }
}

#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Fault>>>);

impl Faults {
    pub fn add(&self, f: Fault) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The first rule matching this request, consuming one use of it.
    pub fn take(&self, method: &str, path_and_query: &str) -> Option<FaultAction> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen = None;
        for (i, f) in g.iter_mut().enumerate() {
            if f.remaining == 0
                || !(f.method == "*" || f.method == method)
                || !path_and_query.contains(&f.contains)
            {
                continue;
            }
            if f.skip > 0 {
                f.skip -= 1;
            } else if chosen.is_none() {
                chosen = Some(i);
            }
        }
        let i = chosen?;
        g[i].remaining -= 1;
        let a = g[i].action.clone();
        if g[i].remaining == 0 {
            g.remove(i);
        }
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down() {
        let f = Faults::default();
        f.add(Fault::on("put", "/start").status(409).times(2));
        assert_eq!(f.take("GET", "/x/start"), None);
        assert_eq!(f.take("PUT", "/x/start"), Some(FaultAction::Status(409)));
        assert_eq!(f.take("PUT", "/y/start?"), Some(FaultAction::Status(409)));
        assert_eq!(f.take("PUT", "/x/start"), None);
    }

    #[test]
    fn after_lets_the_first_ones_through() {
        let f = Faults::default();
        f.add(Fault::on("GET", "/vm").after(2).status(500));
        f.add(Fault::on("*", "/vm").status(409).times(3));
        // Both rules count; the second acts while the first still lets requests through.
        assert_eq!(f.take("GET", "/vm"), Some(FaultAction::Status(409)));
        assert_eq!(f.take("GET", "/vm"), Some(FaultAction::Status(409)));
        assert_eq!(f.take("GET", "/vm"), Some(FaultAction::Status(500)));
        assert_eq!(f.take("GET", "/vm"), Some(FaultAction::Status(409)));
        assert_eq!(f.take("GET", "/vm"), None);
    }
}
