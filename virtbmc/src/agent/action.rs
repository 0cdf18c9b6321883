//! Runs one action the engine asked for. The engine never waits: when a command needs the
//! machine's power transition to end first ([`When::Settled`]), this waits for the backend's
//! view to leave it, woken by the backend's change notifications, then performs the action.
//! A backend that answers busy is asked again once the transition ends. One deadline bounds
//! all of it: a transition that outlasts it answers [`ActionError::Busy`] (0xC0, "node
//! busy"); a backend that does not answer by it, [`ActionError::Timeout`] (0xC3).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::engine::{Action, ActionError, When};

/// A backend may be busy while its view shows no transition (KubeVirt answers "stop/start
/// already underway" before the VM's status says so): no change comes to wake on, so it is
/// asked again after this long, until the deadline.
const BUSY_RETRY: Duration = Duration::from_millis(100);

type Changes = broadcast::Receiver<Arc<str>>;

pub async fn run(
    backend: &dyn Backend,
    name: &str,
    action: Action,
    when: When,
    deadline: Instant,
) -> Result<(), ActionError> {
    // Subscribed before the view is first read, so no change in between is missed.
    let mut changes = backend.subscribe();
    if when == When::Settled {
        settle(backend, &mut changes, name, action, deadline).await?;
    }
    loop {
        if Instant::now() >= deadline {
            return Err(ActionError::Busy);
        }
        match backend.perform(name, action, deadline).await {
            Err(ActionError::Busy) => {}
            result => return result,
        }
        if !transitioning(backend, name) {
            let nudge = async {
                tokio::select! {
                    () = changed(&mut changes, name) => {}
                    () = tokio::time::sleep(BUSY_RETRY) => {}
                }
            };
            tokio::time::timeout_at(deadline, nudge)
                .await
                .map_err(|_| ActionError::Busy)?;
        }
        settle(backend, &mut changes, name, action, deadline).await?;
    }
}

fn transitioning(backend: &dyn Backend, name: &str) -> bool {
    backend.view(name).is_some_and(|v| v.power.in_transition())
}

/// Returns once `name`'s view is out of its transition; Busy if the deadline comes first.
async fn settle(
    backend: &dyn Backend,
    changes: &mut Changes,
    name: &str,
    action: Action,
    deadline: Instant,
) -> Result<(), ActionError> {
    if !transitioning(backend, name) {
        return Ok(());
    }
    log::debug!("bmc={name} action={action} waits for the power transition to end");
    let wait = async {
        while transitioning(backend, name) {
            changed(changes, name).await;
        }
    };
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(()) => Ok(()),
        Err(_) => {
            log::info!("bmc={name} action={action} power transition outlasted the deadline");
            Err(ActionError::Busy)
        }
    }
}

/// Returns at the next change of `name`, or after missed ones (a lagging receiver cannot
/// tell which names changed). A closed channel never changes again: pending until the
/// caller's deadline.
async fn changed(changes: &mut Changes, name: &str) {
    loop {
        match changes.recv().await {
            Ok(n) if &*n == name => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::{Embedded, EmbeddedBackend};
    use crate::engine::PowerState;

    const TRANSITION: Duration = Duration::from_millis(1000);

    fn rig(on: bool) -> (Arc<Embedded>, EmbeddedBackend) {
        let e = Embedded::new(TRANSITION);
        e.add("vm", on, [0; 16]);
        (e.clone(), EmbeddedBackend(e))
    }

    /// Past the end of a transition begun now (its timer and ours would fire together).
    async fn after_transition() {
        tokio::time::sleep(TRANSITION + Duration::from_millis(1)).await;
    }

    fn within(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    async fn act(
        b: &EmbeddedBackend,
        action: Action,
        when: When,
        ms: u64,
    ) -> Result<(), ActionError> {
        run(b, "vm", action, when, within(ms)).await
    }

    #[tokio::test(start_paused = true)]
    async fn soft_off_while_starting_waits_for_on_then_acts() {
        let (e, b) = rig(false);
        act(&b, Action::PowerOn, When::Now, 1500).await.unwrap();
        let start = Instant::now();
        act(&b, Action::SoftOff, When::Settled, 1500).await.unwrap();
        assert_eq!(start.elapsed(), TRANSITION, "woken by the boot itself");
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts), (PowerState::Stopping, 1));
        after_transition().await;
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::Off, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn power_on_while_stopping_waits_for_off_then_acts() {
        let (e, b) = rig(true);
        act(&b, Action::PowerOff, When::Now, 1500).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        act(&b, Action::PowerOn, When::Settled, 1500).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(700));
        assert_eq!(e.get("vm").unwrap().power, PowerState::Starting);
        after_transition().await;
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::On, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transition_longer_than_the_deadline_is_busy_and_nothing_acts() {
        let (e, b) = rig(false);
        act(&b, Action::PowerOn, When::Now, 1500).await.unwrap();
        let start = Instant::now();
        assert_eq!(
            act(&b, Action::SoftOff, When::Settled, 400).await,
            Err(ActionError::Busy)
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(400),
            "the one deadline"
        );
        after_transition().await;
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::On, 1, 0));
    }

    /// The engine saw the machine on, but another client's power off began before this one
    /// reached the backend: the backend's busy is waited out, then the action runs.
    #[tokio::test(start_paused = true)]
    async fn a_backend_busy_is_retried_once_the_transition_ends() {
        let (e, b) = rig(true);
        act(&b, Action::PowerOff, When::Now, 1500).await.unwrap();
        let start = Instant::now();
        act(&b, Action::PowerOn, When::Now, 1500).await.unwrap();
        assert_eq!(start.elapsed(), TRANSITION);
        after_transition().await;
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::On, 1, 1));
        // The same race, with too short a deadline: busy, and the power on never runs.
        act(&b, Action::PowerOff, When::Now, 1500).await.unwrap();
        assert_eq!(
            act(&b, Action::PowerOn, When::Now, 200).await,
            Err(ActionError::Busy)
        );
        tokio::time::sleep(TRANSITION * 2).await;
        let v = e.get("vm").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::Off, 1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn settled_actions_on_a_settled_machine_run_at_once() {
        let (e, b) = rig(true);
        let start = Instant::now();
        act(&b, Action::HardReset, When::Settled, 1500)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(e.get("vm").unwrap().resets, 1);
    }
}
