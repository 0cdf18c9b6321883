//! The seam between the engine and whatever runs the machines: the engine reads a snapshot
//! ([`Backend::view`], never a network call) and asks for side effects ([`Backend::perform`]).
//! The embedded backend lives here; the Kubernetes backend implements the same trait.

pub mod console;
pub mod embedded;
pub mod media;
mod serial;

use std::future::Future;
use std::pin::Pin;

use crate::engine::{Action, ActionError, VmView};

pub type ActionFuture = Pin<Box<dyn Future<Output = Result<(), ActionError>> + Send + 'static>>;

/// A machine's size, for inventories (Redfish's processor and memory summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    pub cpus: u32,
    /// None when the machine declares none.
    pub memory_mib: Option<u64>,
}

pub trait Backend: Send + Sync + 'static {
    /// The machine's current state, from a cache the backend keeps; None when unknown.
    fn view(&self, vm: &str) -> Option<VmView>;

    /// Starts `action` on `vm`. The future resolves when the backend accepted or refused it
    /// (not when the machine finished its transition), as a physical BMC answers at once, and
    /// by `deadline` at the latest ([`ActionError::Timeout`]): the action's one deadline,
    /// which the driver may already have spent part of waiting for a transition to end.
    ///
    /// [`ActionError::Busy`] means the machine is in a transition this backend cannot act
    /// during; the driver tries again once the view has settled, within the same deadline.
    fn perform(&self, vm: &str, action: Action, deadline: tokio::time::Instant) -> ActionFuture;

    /// Names of machines whose view changed, as they change: what keeps the fast path's
    /// power map in step with the backend (a lagging receiver re-reads every view), and what
    /// an action waiting for a transition to end wakes on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>>;

    /// The machine's size as declared, from the same caches as [`Backend::view`]; None when
    /// unknown.
    fn hardware(&self, vm: &str) -> Option<Hardware> {
        let _ = vm;
        None
    }

    /// Opens `vm`'s serial console for a Serial-over-LAN session; it stays open (following
    /// the VM through restarts) until the returned [`console::Console`] is dropped.
    fn open_console(&self, vm: &str) -> console::Console {
        let _ = vm;
        console::Console::unavailable()
    }

    /// `vm`'s virtual CD from the backend's cache (never a network call): None when the
    /// drive is empty, [`media::MediaError::Unsupported`] when this backend has no virtual
    /// media (the protocol side then offers none).
    fn media(&self, vm: &str) -> Result<Option<media::Medium>, media::MediaError> {
        let _ = vm;
        Err(media::MediaError::Unsupported)
    }

    /// Puts the image at `image` (an http or https URL) into `vm`'s virtual CD, replacing
    /// any medium there. Resolves once the backend accepted the request; a backend that
    /// fetches the image first reports the fetch through [`Backend::media`].
    fn insert_media(&self, vm: &str, image: &str) -> media::MediaFuture {
        let _ = (vm, image);
        Box::pin(std::future::ready(Err(media::MediaError::Unsupported)))
    }

    /// Empties `vm`'s virtual CD; an empty drive stays empty.
    fn eject_media(&self, vm: &str) -> media::MediaFuture {
        let _ = vm;
        Box::pin(std::future::ready(Err(media::MediaError::Unsupported)))
    }
}
