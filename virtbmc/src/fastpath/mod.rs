//! The XDP fast path: loads the `virtbmc-ebpf` object, attaches it to an interface, pins its
//! maps and keeps `BMCS` in step with the BMCs the agent serves. The only module that knows aya.
//!
//! Lifecycle: [`FastPath::start`] checks capabilities, mounts bpffs if needed, removes pins a
//! previous run left in the pin folder, loads the object, pins `bmcs` and `counters`, attaches.
//! Dropping the [`FastPath`] (or [`FastPath::shutdown`]) detaches the program and removes the
//! pins. A crashed agent's program is detached by the kernel when its link fd closes.
//!
//! The map layout and what the program answers are documented in `virtbmc-common`.
//!
//! # Wiring it into the agent
//! ```ignore
//! let object = FastPathConfig::default_object(args.ebpf_object.as_deref(), None);
//! let mut fp = match &args.xdp_iface {
//!     Some(iface) => FastPath::start(&FastPathConfig::new(object, Some(iface.clone()), args.xdp_mode))?,
//!     None => FastPath::off(),
//! };
//! // Inside the tokio runtime, so that the program's log records are drained.
//! for vm in &vms {
//!     fp.set_bmc(vm.port, &fastpath::bmc_state(&config, vm.on)?)?; // after binding the socket
//! }
//! // Whenever the power snapshot or the config changes: set_bmc again (one map write).
//! // Before closing a BMC's socket: fp.remove_bmc(port). Metrics: fp.counters().
//! // Shutdown: drop(fp) (detaches, unpins) before the sockets go.
//! ```
//! `set_bmc` takes `&mut self`: share the `FastPath` as `Arc<Mutex<FastPath>>` between tasks.
//! IPMI 1.5 sessions are published only once the engine follows the protocol of
//! `virtbmc_common::session` ([`FastPath::publish_v15_session`], [`SessionSlots`]).

mod caps;
mod iface;
mod pins;
mod sessions;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use virtbmc_common::session::{
    SESSION_IDS_MAP, SESSION_IDS_PIN, SESSIONS_MAP, SESSIONS_PIN, V15Session,
};
use virtbmc_common::{
    BMCS_MAP, BMCS_PIN, BmcState, COUNTERS_MAP, COUNTERS_PIN, Counters, PROGRAM_NAME,
};

pub use caps::missing_capabilities;
pub use sessions::{Publisher, SessionSlots, Shared, monotonic_ns};
pub use virtbmc_common::{self as common, PIN_DIR};

/// Environment variable naming the eBPF object when `--ebpf-object` is not given.
pub const EBPF_OBJECT_ENV: &str = "VIRTBMC_EBPF_OBJECT";
/// Default object path, relative to the workspace (where `cargo xtask build-ebpf` puts it).
pub const DEFAULT_EBPF_OBJECT: &str = "target/bpfel-unknown-none/release/virtbmc-ebpf";

/// XDP return codes, as `test_run` reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// How to attach the program (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Generic (skb) mode on virtual devices such as veth, native elsewhere with fallback.
    #[default]
    Auto,
    /// Driver mode; fails if the driver has no XDP support.
    Native,
    /// Generic mode, executed by the kernel network stack.
    Skb,
    /// No fast path: every packet goes to the agent's sockets.
    Off,
}

impl std::str::FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            "off" => Ok(Self::Off),
            _ => Err(format!("unknown XDP mode {s:?} (auto, native, skb, off)")),
        }
    }
}

/// The mode the program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Skb,
}

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error(
        "the XDP fast path needs {missing} (effective capabilities lack them); run the agent \
         with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN and CAP_NET_ADMIN), or \
         pass --xdp-mode off"
    )]
    MissingCapabilities { missing: String },
    #[error(
        "cannot read the eBPF object {path}: {source} (build it with `cargo xtask build-ebpf`)"
    )]
    Object {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object {path}: {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Program {
        what: String,
        source: Box<ProgramError>,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning under {dir}: {source}")]
    Pin {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cipher records are {0} bytes, at most {max} fit", max = virtbmc_common::MAX_CIPHER_RECORDS)]
    CipherRecordsTooLong(usize),
    #[error("the fast path is off")]
    Off,
}

type Result<T> = std::result::Result<T, FastPathError>;

/// Where to load from and what to attach to.
#[derive(Clone, Debug)]
pub struct FastPathConfig {
    /// The eBPF object (`--ebpf-object`).
    pub object: PathBuf,
    /// Interface to attach to (`--xdp-iface`); `None` loads without attaching (tests).
    pub iface: Option<String>,
    pub mode: XdpMode,
    /// Folder under bpffs for the pinned maps; the agent uses [`PIN_DIR`].
    pub pin_dir: PathBuf,
}

impl FastPathConfig {
    pub fn new(object: impl Into<PathBuf>, iface: Option<String>, mode: XdpMode) -> Self {
        Self {
            object: object.into(),
            iface,
            mode,
            pin_dir: PathBuf::from(PIN_DIR),
        }
    }

    /// The object path from `--ebpf-object`, else `$VIRTBMC_EBPF_OBJECT`, else the default
    /// relative to `workspace` (the current folder when `None`).
    pub fn default_object(flag: Option<&Path>, workspace: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os(EBPF_OBJECT_ENV) {
            return PathBuf::from(p);
        }
        workspace
            .unwrap_or(Path::new("."))
            .join(DEFAULT_EBPF_OBJECT)
    }
}

/// The fast path's view of a BMC, built with the engine's own encoder so that both sides
/// answer with the same bytes. The agent calls this whenever the config or the power state
/// changes and hands the result to [`FastPath::set_bmc`].
pub fn bmc_state(config: &crate::engine::config::BmcConfig, power_on: bool) -> Result<BmcState> {
    let records = crate::engine::commands::suite_records(config);
    BmcState::with_ciphers(power_on, config.allow_auth_none, &records)
        .ok_or(FastPathError::CipherRecordsTooLong(records.len()))
}

/// One `BPF_PROG_TEST_RUN` result.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// XDP action: [`XDP_PASS`], [`XDP_TX`], [`XDP_DROP`], ...
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average time per run as the kernel measured it.
    pub per_run: Duration,
}

/// The loaded (and usually attached) XDP program with its maps.
pub struct FastPath {
    inner: Option<Loaded>,
}

struct Loaded {
    ebpf: Ebpf,
    bmcs: HashMap<MapData, u16, Value<BmcState>>,
    counters: PerCpuArray<MapData, Value<Counters>>,
    session_ids: sessions::SessionIds,
    slots: std::sync::Arc<SessionSlots>,
    alloc: std::sync::Arc<std::sync::Mutex<sessions::SlotAlloc>>,
    _sessions_map: aya::maps::Map,
    link: Option<(String, XdpLinkId, Attached)>,
    pin_dir: PathBuf,
    _logger: log_task::LoggerHandle,
}

/// aya needs its own `Pod`; the shared types are `bytemuck::Pod` (no padding, any bit
/// pattern valid), which is the same promise.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Value<T: bytemuck::Pod>(T);
// SAFETY: T is bytemuck::Pod: plain bytes, no padding, every bit pattern valid.
unsafe impl<T: bytemuck::Pod> aya::Pod for Value<T> {}

impl FastPath {
    /// A fast path that does nothing (`--xdp-mode off`).
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Loads, pins and (when `cfg.iface` is set) attaches the program.
    pub fn start(cfg: &FastPathConfig) -> Result<Self> {
        if cfg.mode == XdpMode::Off {
            log::info!("fastpath: XDP mode off, every packet goes to userspace");
            return Ok(Self::off());
        }
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(FastPathError::MissingCapabilities {
                missing: missing.join(" and "),
            });
        }
        let bytes = std::fs::read(&cfg.object).map_err(|source| FastPathError::Object {
            path: cfg.object.clone(),
            source,
        })?;
        pins::prepare(&cfg.pin_dir).map_err(|source| FastPathError::Pin {
            dir: cfg.pin_dir.clone(),
            source,
        })?;

        // Userspace drops log records above its level anyway; tell the program so it does not
        // even format them (`aya_log::LEVEL` is the global the eBPF side checks).
        let level = log::max_level() as usize as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
            .load(&bytes)
            .map_err(|source| FastPathError::Load {
                path: cfg.object.clone(),
                source: Box::new(source),
            })?;
        // The logger must stay alive (and be drained) for as long as the program runs.
        let logger = log_task::start(&mut ebpf);

        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(FastPathError::Missing("XDP program virtbmc_xdp"))?
            .try_into()
            .map_err(|source| FastPathError::Program {
                what: "program type".into(),
                source: Box::new(source),
            })?;
        prog.load().map_err(|source| FastPathError::Program {
            what: "verifying virtbmc_xdp".into(),
            source: Box::new(source),
        })?;

        let bmcs_map = ebpf
            .take_map(BMCS_MAP)
            .ok_or(FastPathError::Missing("map BMCS"))?;
        let counters_map = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(FastPathError::Missing("map COUNTERS"))?;
        let pin = |m: &aya::maps::Map, name: &str| {
            m.pin(cfg.pin_dir.join(name))
                .map_err(|e| FastPathError::Pin {
                    dir: cfg.pin_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
        };
        let ids_map = ebpf
            .take_map(SESSION_IDS_MAP)
            .ok_or(FastPathError::Missing("map SESSION_IDS"))?;
        let sessions_map = ebpf
            .take_map(SESSIONS_MAP)
            .ok_or(FastPathError::Missing("map SESSIONS"))?;
        pin(&bmcs_map, BMCS_PIN)?;
        pin(&counters_map, COUNTERS_PIN)?;
        pin(&ids_map, SESSION_IDS_PIN)?;
        pin(&sessions_map, SESSIONS_PIN)?;
        let aya::maps::Map::Array(sessions_data) = &sessions_map else {
            return Err(FastPathError::Missing("SESSIONS as an array"));
        };
        let slots = SessionSlots::map(sessions_data.fd()).map_err(|source| FastPathError::Pin {
            dir: cfg.pin_dir.join(SESSIONS_PIN),
            source,
        })?;
        let session_ids = HashMap::try_from(ids_map).map_err(|source| FastPathError::Map {
            map: SESSION_IDS_MAP,
            source: Box::new(source),
        })?;
        let bmcs = HashMap::try_from(bmcs_map).map_err(|source| FastPathError::Map {
            map: BMCS_MAP,
            source: Box::new(source),
        })?;
        let counters =
            PerCpuArray::try_from(counters_map).map_err(|source| FastPathError::Map {
                map: COUNTERS_MAP,
                source: Box::new(source),
            })?;
        let mut loaded = Loaded {
            ebpf,
            bmcs,
            counters,
            session_ids: std::sync::Arc::new(std::sync::Mutex::new(session_ids)),
            slots: std::sync::Arc::new(slots),
            alloc: Default::default(),
            _sessions_map: sessions_map,
            link: None,
            pin_dir: cfg.pin_dir.clone(),
            _logger: logger,
        };
        if let Some(iface) = &cfg.iface {
            loaded.attach(iface, cfg.mode)?;
        }
        Ok(Self {
            inner: Some(loaded),
        })
    }

    /// Whether the program is loaded.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The interface and mode the program is attached in, if it is.
    pub fn attached(&self) -> Option<(&str, Attached)> {
        let (iface, _, mode) = self.inner.as_ref()?.link.as_ref()?;
        Some((iface.as_str(), *mode))
    }

    /// Publishes (or updates) the state of the BMC on UDP `port`.
    pub fn set_bmc(&mut self, port: u16, state: &BmcState) -> Result<()> {
        if state.cipher_len as usize > virtbmc_common::MAX_CIPHER_RECORDS {
            return Err(FastPathError::CipherRecordsTooLong(
                state.cipher_len as usize,
            ));
        }
        let Some(l) = &mut self.inner else {
            return Ok(());
        };
        l.bmcs
            .insert(port, Value(*state), 0)
            .map_err(|source| FastPathError::Map {
                map: BMCS_MAP,
                source: Box::new(source),
            })
    }

    /// Stops answering for `port` (call before closing the BMC's socket).
    pub fn remove_bmc(&mut self, port: u16) -> Result<()> {
        let Some(l) = &mut self.inner else {
            return Ok(());
        };
        match l.bmcs.remove(&port) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(FastPathError::Map {
                map: BMCS_MAP,
                source: Box::new(source),
            }),
        }
    }

    /// The state published for `port`.
    pub fn bmc(&self, port: u16) -> Result<Option<BmcState>> {
        let Some(l) = &self.inner else {
            return Ok(None);
        };
        match l.bmcs.get(&port, 0) {
            Ok(v) => Ok(Some(v.0)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(FastPathError::Map {
                map: BMCS_MAP,
                source: Box::new(source),
            }),
        }
    }

    /// The shared IPMI 1.5 session slots, when the fast path is on.
    pub fn sessions(&self) -> Option<&SessionSlots> {
        self.inner.as_ref().map(|l| &*l.slots)
    }

    /// The session publisher for the BMC on `port`: IPMI 1.5 sessions its engine offers
    /// (`Bmc::poll_publish`) and the driver publishes are then answered by the program as
    /// well. None when the fast path is off.
    pub fn session_publisher(
        &self,
        port: u16,
    ) -> Option<std::sync::Arc<dyn crate::engine::session::SessionPublisher>> {
        let l = self.inner.as_ref()?;
        Some(std::sync::Arc::new(Publisher {
            port,
            slots: l.slots.clone(),
            ids: l.session_ids.clone(),
            alloc: l.alloc.clone(),
        }))
    }

    /// Publishes an IPMI 1.5 session in a given `slot` (tests; the agent uses
    /// [`FastPath::session_publisher`]). False if the slot is in use.
    pub fn publish_v15_session(&mut self, slot: u32, session: &V15Session) -> Result<bool> {
        let Some(l) = &mut self.inner else {
            return Ok(false);
        };
        if !l.slots.publish(slot, session) {
            return Ok(false);
        }
        l.session_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.session_id, slot, 0)
            .map_err(|source| FastPathError::Map {
                map: SESSION_IDS_MAP,
                source: Box::new(source),
            })?;
        Ok(true)
    }

    /// Stops the program answering for a session published with
    /// [`FastPath::publish_v15_session`] (the first half of closing it).
    pub fn close_v15_session(&mut self, session_id: u32, slot: u32) -> Result<()> {
        let Some(l) = &mut self.inner else {
            return Ok(());
        };
        l.slots.close(slot);
        sessions::remove_id(&l.session_ids, session_id).map_err(|source| FastPathError::Map {
            map: SESSION_IDS_MAP,
            source: Box::new(source),
        })
    }

    /// Counters summed over CPUs (all zero when off).
    pub fn counters(&self) -> Result<Counters> {
        let mut sum = Counters::default();
        let Some(l) = &self.inner else {
            return Ok(sum);
        };
        let per_cpu = l.counters.get(&0, 0).map_err(|source| FastPathError::Map {
            map: COUNTERS_MAP,
            source: Box::new(source),
        })?;
        for c in per_cpu.iter() {
            sum.add(&c.0);
        }
        Ok(sum)
    }

    /// Runs the program once on `frame` (repeated `repeat` times by the kernel) with
    /// `BPF_PROG_TEST_RUN`: no network needed. Counters move as for real traffic.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        let l = self.inner.as_ref().ok_or(FastPathError::Off)?;
        let prog: &Xdp = l
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(FastPathError::Missing("XDP program virtbmc_xdp"))?
            .try_into()
            .map_err(|source| FastPathError::Program {
                what: "program type".into(),
                source: Box::new(source),
            })?;
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|source| FastPathError::Program {
                what: "BPF_PROG_TEST_RUN".into(),
                source: Box::new(source),
            })?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutcome {
            action: r.return_value,
            frame: out,
            per_run: r.duration,
        })
    }

    /// Detaches the program and removes the pins (also done on drop).
    pub fn shutdown(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        let Some(mut l) = self.inner.take() else {
            return;
        };
        if let Some((iface, id, _)) = l.link.take()
            && let Some(Ok(prog)) = l.ebpf.program_mut(PROGRAM_NAME).map(<&mut Xdp>::try_from)
        {
            match prog.detach(id) {
                Ok(()) => log::info!("fastpath: detached from {iface}"),
                Err(e) => log::warn!("fastpath: detaching from {iface}: {e}"),
            }
        }
        pins::remove(&l.pin_dir);
        drop(l);
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Loaded {
    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(FastPathError::Missing("XDP program virtbmc_xdp"))?
            .try_into()
            .map_err(|source| FastPathError::Program {
                what: "program type".into(),
                source: Box::new(source),
            })?;
        let (first, fallback, why) = choose_mode(iface, mode);
        log::info!("fastpath: attaching to {iface} in {first:?} mode: {why}");
        let attempt = |prog: &mut Xdp, m: Attached| {
            let aya_mode = match m {
                Attached::Native => AyaXdpMode::Driver,
                Attached::Skb => AyaXdpMode::Skb,
            };
            prog.attach(iface, aya_mode).or_else(|e| {
                // A program a crashed run attached through netlink survives it; ours only.
                if is_busy(&e) && pins::stale_program_present(PROGRAM_NAME) {
                    log::warn!("fastpath: {iface} has a stale XDP program, removing it");
                    pins::detach_netlink(iface);
                    prog.attach(iface, aya_mode)
                } else {
                    Err(e)
                }
            })
        };
        let (id, used) = match attempt(prog, first) {
            Ok(id) => (id, first),
            Err(e) => match fallback {
                Some(fb) => {
                    log::warn!("fastpath: {first:?} mode on {iface} failed ({e}), using {fb:?}");
                    let id = attempt(prog, fb).map_err(|source| FastPathError::Program {
                        what: format!("attaching to {iface} in {fb:?} mode"),
                        source: Box::new(source),
                    })?;
                    (id, fb)
                }
                None => {
                    return Err(FastPathError::Program {
                        what: format!("attaching to {iface} in {first:?} mode"),
                        source: Box::new(e),
                    });
                }
            },
        };
        self.link = Some((iface.to_string(), id, used));
        Ok(())
    }
}

fn is_busy(e: &ProgramError) -> bool {
    match e {
        ProgramError::AlreadyAttached => true,
        ProgramError::SyscallError(s) => matches!(
            s.io_error.raw_os_error(),
            Some(libc::EBUSY) | Some(libc::EEXIST)
        ),
        _ => false,
    }
}

/// The first mode to try, the fallback, and why.
fn choose_mode(iface: &str, mode: XdpMode) -> (Attached, Option<Attached>, &'static str) {
    match mode {
        XdpMode::Native => (Attached::Native, None, "requested"),
        XdpMode::Skb | XdpMode::Off => (Attached::Skb, None, "requested"),
        XdpMode::Auto if is_virtual(iface) => (
            Attached::Skb,
            None,
            "virtual device (veth or similar): a native XDP_TX reply is stranded in the peer \
             unless the peer runs XDP itself, and generic mode was also faster on veth",
        ),
        XdpMode::Auto => (
            Attached::Native,
            Some(Attached::Skb),
            "physical device: native XDP_TX transmits, generic mode is the fallback",
        ),
    }
}

use iface::is_virtual;

mod log_task {
    //! Drains the program's aya-log ring buffer into `log` while a tokio runtime is there;
    //! otherwise just keeps the logger (and so its map) alive.
    use aya::Ebpf;

    type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

    pub(super) enum LoggerHandle {
        None,
        Held(#[allow(dead_code)] Box<Logger>),
        Task(tokio::task::JoinHandle<()>),
    }

    impl Drop for LoggerHandle {
        fn drop(&mut self) {
            if let Self::Task(t) = self {
                t.abort();
            }
        }
    }

    pub(super) fn start(ebpf: &mut Ebpf) -> LoggerHandle {
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("fastpath: no eBPF logger: {e}");
                return LoggerHandle::None;
            }
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return LoggerHandle::Held(Box::new(logger));
        };
        let _guard = rt.enter();
        // SAFETY: the logger owns its ring buffer's map fd for as long as it lives, and the
        // AsyncFd owns the logger.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        match fd {
            Ok(mut fd) => LoggerHandle::Task(rt.spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            })),
            Err(e) => {
                log::debug!("fastpath: eBPF logger not pollable: {e}");
                LoggerHandle::None
            }
        }
    }
}
