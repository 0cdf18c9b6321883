//! An in-process backend: machines with a power state, a boot override, a GUID and a virtual
//! CD, whose power transitions take a realistic delay. It backs the demo, the tests and users who run
//! the agent without Kubernetes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::console::Console;
use super::media::{self, MediaError, MediaFuture, MediaState, Medium};
use super::{ActionFuture, Backend};
use crate::engine::{Action, ActionError, BootDevice, BootOverride, PowerState, VmView};

#[derive(Debug, Clone)]
pub struct EmbeddedVm {
    pub power: PowerState,
    pub boot: Option<BootOverride>,
    pub guid: [u8; 16],
    /// Completed power-ons, power-offs and hard resets: what tests and the admin page read.
    pub starts: u64,
    pub stops: u64,
    pub resets: u64,
    /// The image URL in the virtual CD: inserted at once, as nothing needs fetching.
    pub media: Option<String>,
    /// The device the last boot came from, as firmware picks it: the override's device,
    /// except that an empty CD drive falls through to the disk.
    pub booted: Option<BootDevice>,
    /// Bumped by every new transition: the stages of one cut short find it moved on and
    /// do nothing.
    transition: u64,
}

#[derive(Debug)]
pub struct Embedded {
    vms: Mutex<HashMap<String, EmbeddedVm>>,
    transition: Duration,
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Embedded {
    pub fn new(transition: Duration) -> Arc<Embedded> {
        Arc::new(Embedded {
            vms: Mutex::new(HashMap::new()),
            transition,
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    pub fn add(&self, name: &str, on: bool, guid: [u8; 16]) {
        let power = if on { PowerState::On } else { PowerState::Off };
        let vm = EmbeddedVm {
            power,
            boot: None,
            guid,
            starts: 0,
            stops: 0,
            resets: 0,
            media: None,
            booted: None,
            transition: 0,
        };
        self.lock().insert(name.to_string(), vm);
        self.changed(name);
    }

    pub fn get(&self, name: &str) -> Option<EmbeddedVm> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EmbeddedVm>> {
        // A panic while holding this lock would be a bug in this file; the data stays usable.
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, name: &str) {
        // No receiver (no fast path) is fine: nobody needs to know.
        let _ = self.changes.send(Arc::from(name));
    }

    /// Marks the machine booted: a one-shot boot override is consumed by the boot it served.
    fn booted(vm: &mut EmbeddedVm) {
        vm.power = PowerState::On;
        vm.starts += 1;
        Embedded::boot_device(vm);
    }

    /// Picks the device a boot comes from and consumes a one-shot override.
    fn boot_device(vm: &mut EmbeddedVm) {
        vm.booted = Some(match vm.boot.map(|b| b.device) {
            Some(BootDevice::Cdrom) if vm.media.is_none() => BootDevice::Disk,
            Some(device) => device,
            None => BootDevice::Disk,
        });
        if vm.boot.is_some_and(|b| !b.persistent) {
            vm.boot = None;
        }
    }

    /// Schedules the end of transition number `transition`, unless a newer one replaces it
    /// first. Runs on the tokio runtime of the caller.
    fn finish_later(
        self: &Arc<Self>,
        name: String,
        transition: u64,
        stages: Vec<fn(&mut EmbeddedVm)>,
    ) {
        let me = Arc::clone(self);
        let delay = self.transition;
        tokio::spawn(async move {
            for stage in stages {
                tokio::time::sleep(delay).await;
                let ran = match me.lock().get_mut(&name) {
                    Some(vm) if vm.transition == transition => {
                        stage(vm);
                        true
                    }
                    _ => false,
                };
                if !ran {
                    return;
                }
                me.changed(&name);
            }
        });
    }
}

/// Backend over an `Arc<Embedded>` (transitions need a handle to finish later).
#[derive(Debug, Clone)]
pub struct EmbeddedBackend(pub Arc<Embedded>);

impl Backend for EmbeddedBackend {
    fn view(&self, vm: &str) -> Option<VmView> {
        self.0.lock().get(vm).map(|v| VmView {
            power: v.power,
            boot: v.boot,
            guid: v.guid,
        })
    }

    /// Every simulated machine is the same small one.
    fn hardware(&self, vm: &str) -> Option<super::Hardware> {
        self.0.lock().get(vm).map(|_| super::Hardware {
            cpus: 1,
            memory_mib: Some(1024),
        })
    }

    /// Answers at once, well before any deadline.
    fn perform(&self, vm: &str, action: Action, _deadline: tokio::time::Instant) -> ActionFuture {
        let result = self.apply(vm, action);
        if result.is_ok() {
            self.0.changed(vm);
        }
        Box::pin(std::future::ready(result))
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.0.changes.subscribe()
    }

    /// A simulated serial line (see [`super::serial`]), on the caller's tokio runtime.
    fn open_console(&self, vm: &str) -> Console {
        let (console, events, input) = Console::channel();
        let line = super::serial::SerialLine::new(vm);
        tokio::spawn(super::serial::run(self.0.clone(), line, events, input));
        console
    }

    fn media(&self, vm: &str) -> Result<Option<Medium>, MediaError> {
        let vms = self.0.lock();
        let vm = vms
            .get(vm)
            .ok_or_else(|| MediaError::NoMachine(vm.to_string()))?;
        Ok(vm.media.as_ref().map(|image| Medium {
            image: image.clone(),
            state: MediaState::Inserted,
        }))
    }

    fn insert_media(&self, vm: &str, image: &str) -> MediaFuture {
        let result = if media::valid_image(image) {
            self.set_media(vm, Some(image.to_string()))
        } else {
            Err(MediaError::BadImage(image.to_string()))
        };
        Box::pin(std::future::ready(result))
    }

    fn eject_media(&self, vm: &str) -> MediaFuture {
        Box::pin(std::future::ready(self.set_media(vm, None)))
    }
}

impl Embedded {
    /// Power and the number of boots so far (power-ons and resets): what the serial line
    /// follows.
    pub(super) fn boots(&self, name: &str) -> Option<(PowerState, u64)> {
        self.lock()
            .get(name)
            .map(|v| (v.power, v.starts + v.resets))
    }

    pub(super) fn watch(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }
}

impl EmbeddedBackend {
    fn set_media(&self, name: &str, image: Option<String>) -> Result<(), MediaError> {
        let mut vms = self.0.lock();
        let vm = vms
            .get_mut(name)
            .ok_or_else(|| MediaError::NoMachine(name.to_string()))?;
        vm.media = image;
        drop(vms);
        self.0.changed(name);
        Ok(())
    }

    /// Acts as a chassis does: power off cuts a power-on short; any other power action during
    /// a transition is refused as busy (the driver waits for the transition and tries again).
    fn apply(&self, name: &str, action: Action) -> Result<(), ActionError> {
        use PowerState::{Off, On, Starting, Stopping};
        let e = &self.0;
        let mut vms = e.lock();
        let vm = vms
            .get_mut(name)
            .ok_or_else(|| ActionError::Failed(format!("no machine named {name}")))?;
        let stages: Vec<fn(&mut EmbeddedVm)> = match (action, vm.power) {
            (Action::SetBoot(b), _) => {
                vm.boot = b;
                return Ok(());
            }
            (Action::PowerOff, Starting) => {
                vm.power = Stopping;
                vec![stopped]
            }
            (_, Starting | Stopping) => return Err(ActionError::Busy),
            (Action::PowerOn, On) | (Action::PowerOff | Action::SoftOff, Off) => return Ok(()),
            (Action::PowerCycle | Action::HardReset, Off) => {
                return Err(ActionError::NotInState("machine is off".into()));
            }
            (Action::PowerOn, _) => {
                vm.power = Starting;
                vec![Embedded::booted]
            }
            (Action::PowerOff | Action::SoftOff, _) => {
                vm.power = Stopping;
                vec![stopped]
            }
            (Action::PowerCycle, _) => {
                vm.power = Stopping;
                vec![
                    |vm| {
                        stopped(vm);
                        vm.power = Starting;
                    },
                    Embedded::booted,
                ]
            }
            (Action::HardReset, _) => {
                // A reset keeps power on: the machine reboots in place.
                vm.resets += 1;
                Embedded::boot_device(vm);
                return Ok(());
            }
        };
        vm.transition += 1;
        let transition = vm.transition;
        drop(vms);
        log::info!("vm={name} action={action} accepted");
        e.finish_later(name.to_string(), transition, stages);
        Ok(())
    }
}

fn stopped(vm: &mut EmbeddedVm) {
    vm.power = PowerState::Off;
    vm.stops += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test(start_paused = true)]
    async fn power_transitions_take_time_and_consume_one_shot_boot() {
        let e = Embedded::new(Duration::from_millis(100));
        e.add("a", false, [1; 16]);
        let b = EmbeddedBackend(e.clone());
        let mut changes = b.subscribe();
        let pxe = BootOverride {
            device: BootDevice::Pxe,
            persistent: false,
            efi: true,
        };
        b.perform("a", Action::SetBoot(Some(pxe)), soon())
            .await
            .unwrap();
        b.perform("a", Action::PowerOn, soon()).await.unwrap();
        assert_eq!(b.view("a").unwrap().power, PowerState::Starting);
        // Only a hard power off may cut a power-on short (see the next test).
        assert_eq!(
            b.perform("a", Action::SoftOff, soon()).await,
            Err(ActionError::Busy)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = e.get("a").unwrap();
        assert_eq!((v.power, v.starts, v.boot), (PowerState::On, 1, None));
        let mut seen = 0;
        while let Ok(name) = changes.try_recv() {
            assert_eq!(&*name, "a");
            seen += 1;
        }
        assert_eq!(seen, 3, "boot set, power-on accepted, booted");
        b.perform("a", Action::PowerCycle, soon()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = e.get("a").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::On, 2, 1));
        assert!(matches!(
            b.perform("missing", Action::PowerOn, soon()).await,
            Err(ActionError::Failed(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cd_boot_needs_a_medium_and_eject_empties_the_drive() {
        let e = Embedded::new(Duration::from_millis(10));
        e.add("a", false, [1; 16]);
        let b = EmbeddedBackend(e.clone());
        let cd = Some(BootOverride {
            device: BootDevice::Cdrom,
            persistent: true,
            efi: true,
        });
        assert_eq!(b.media("a"), Ok(None));
        b.perform("a", Action::SetBoot(cd), soon()).await.unwrap();
        b.perform("a", Action::PowerOn, soon()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(e.get("a").unwrap().booted, Some(BootDevice::Disk), "empty");
        assert_eq!(
            b.insert_media("a", "ftp://h/x.iso").await,
            Err(MediaError::BadImage("ftp://h/x.iso".into()))
        );
        b.insert_media("a", "http://h/x.iso").await.unwrap();
        assert!(b.media("a").unwrap().unwrap().inserted());
        b.perform("a", Action::HardReset, soon()).await.unwrap();
        assert_eq!(e.get("a").unwrap().booted, Some(BootDevice::Cdrom));
        b.eject_media("a").await.unwrap();
        b.eject_media("a").await.unwrap();
        assert_eq!(b.media("a"), Ok(None));
        assert_eq!(
            b.insert_media("missing", "http://h/x.iso").await,
            Err(MediaError::NoMachine("missing".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn power_off_cuts_a_power_on_short_and_its_boot_never_lands() {
        let e = Embedded::new(Duration::from_millis(100));
        e.add("a", false, [1; 16]);
        let b = EmbeddedBackend(e.clone());
        b.perform("a", Action::PowerOn, soon()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        b.perform("a", Action::PowerOff, soon()).await.unwrap();
        assert_eq!(b.view("a").unwrap().power, PowerState::Stopping);
        for action in [Action::PowerOn, Action::PowerOff, Action::HardReset] {
            assert_eq!(
                b.perform("a", action, soon()).await,
                Err(ActionError::Busy),
                "{action} while stopping"
            );
        }
        // The power-on would have landed at 100 ms: it must not.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.view("a").unwrap().power, PowerState::Stopping);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let v = e.get("a").unwrap();
        assert_eq!((v.power, v.starts, v.stops), (PowerState::Off, 0, 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(e.get("a").unwrap().power, PowerState::Off, "stays off");
    }
}
