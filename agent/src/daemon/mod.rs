//! `netns-agent run`: start-up (bind, load, attach, seed from the inventory), the supervised
//! task set (events, housekeeping, attribution, config reload on SIGHUP, HTTP), and shutdown
//! on SIGINT/SIGTERM, which detaches everything.

pub mod context;
pub mod tasks;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use context::{Agent, Shared};
use tasks::{Health, OnEnd, TaskError, TaskSpec};

use crate::{
    config::{ConfigError, Settings, Tunables},
    errors::error_chain,
    expose::{
        self,
        web::{WebConfig, WebConfigError},
    },
    families::FamilyMaps,
    kernel::{
        attach::{self, KernelView, ProbeOutcome},
        host,
        inventory::{Inventory, InventoryError},
        loader::{self, LoadError, Prepared},
        maps::MapError,
        probes::CLEANUP_PROBE,
        procfs::{self, CgroupNames},
        ring::{EventRing, EventStream, RingError},
    },
    model::{
        Model,
        journal::{EventsFile, FileError, Journal},
        namespaces::NamespaceTable,
        snapshot::{AgentFacts, ProbeStatus},
    },
};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] expose::http::ListenError),
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    EventsFile(#[from] FileError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// The start-up log line for one probe.
pub fn outcome_line(outcome: &ProbeOutcome) -> String {
    let failures: Vec<String> = outcome
        .attempts
        .iter()
        .filter_map(|(mode, result)| result.as_ref().err().map(|why| format!("{mode}: {why}")))
        .collect();
    let head = match outcome.attached {
        Some(mode) => format!("probe {}: attached ({mode})", outcome.probe.name),
        None if outcome.disabled => format!("probe {}: disabled (disabled_probes)", outcome.probe.name),
        None => format!("probe {}: NOT attached", outcome.probe.name),
    };
    if failures.is_empty() { head } else { format!("{head}; {}", failures.join("; ")) }
}

/// Reads the config again (the file, with the command line's flags over it).
pub type Reload = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// Runs the agent until SIGINT/SIGTERM, on its own runtime.
pub fn run(settings: Settings, reload: Reload) -> Result<(), DaemonError> {
    // Start-up runs on this thread alone (a runtime without worker threads), then the
    // capabilities only start-up needs are dropped, then the runtime's threads start:
    // capabilities are per thread and a thread inherits its creator's, so every thread the
    // agent runs afterwards has the reduced set.
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?
        .block_on(start(&settings))?;
    drop_start_up_caps();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?
        .block_on(serve(started, settings, reload))
}

/// Drops the capabilities running does not need, and says what is kept and why.
fn drop_start_up_caps() {
    use crate::kernel::privileges;
    if let Some(threads) = privileges::thread_count().filter(|n| *n > 1) {
        // Should not happen: the other threads would keep every capability.
        log::warn!("{threads} threads before dropping capabilities: only this one drops them");
    }
    match privileges::drop_start_up_caps() {
        Ok(dropped) => log::info!(
            "capabilities after start-up: {} kept (reading maps, naming processes and holders); {} dropped",
            join_or_none(&privileges::names(dropped.kept)),
            if dropped.dropped == 0 {
                "none".to_owned()
            } else {
                format!("{} others", dropped.dropped.count_ones())
            },
        ),
        Err(err) => {
            log::warn!("cannot drop the capabilities only start-up needs ({err}); running with all of them")
        }
    }
}

fn join_or_none(names: &[&str]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// What start-up made, for the tasks to run with.
struct Started {
    /// Installs the SIGHUP handler before the slow start-up (its default action ends the process).
    hangup_handled: bool,
    http_options: expose::http::Options,
    /// Bound on the start-up runtime, moved to the serving one.
    listener: std::net::TcpListener,
    outcomes: Vec<ProbeOutcome>,
    release: String,
    maps: FamilyMaps,
    /// Registered with the serving runtime, which polls it.
    ring: EventRing,
    namespaces: NamespaceTable,
    inventory: Option<Inventory>,
    events_file: Option<EventsFile>,
    ebpf: aya::Ebpf,
}

/// Binds, loads, attaches and seeds: everything that needs start-up's capabilities.
async fn start(settings: &Settings) -> Result<Started, DaemonError> {
    // SIGHUP's default action ends the process: handle it before the slow start-up. The
    // handler stays installed for the process; the serving runtime listens for it again.
    let hangup_handled = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(_) => true,
        Err(err) => {
            log::warn!("cannot handle SIGHUP ({err}): it will end the agent, not reload its config");
            false
        }
    };
    // The web config and the port first: a mistake there should fail before any probe
    // touches the kernel.
    let web = match &settings.web_config_file {
        Some(path) => WebConfig::read(path)?,
        None => WebConfig::default(),
    };
    let http_options = expose::http::Options {
        web,
        disable_api: settings.web_disable_api,
        telemetry_path: settings.telemetry_path.clone(),
        max_connections: settings.limits.http_connections,
    };
    let listener = expose::http::bind(settings.listen)
        .await?
        .into_std()
        .map_err(|err| expose::http::ListenError::new(settings.listen, err.to_string()))?;
    // Loading first (the usual missing privilege), then what attribution needs.
    host::check_privileges().map_err(LoadError::from)?;
    host::check_proc_access(&settings.sources.proc_root).map_err(LoadError::from)?;
    for degraded in crate::kernel::privileges::degraded(crate::kernel::privileges::own_caps()) {
        log::warn!(
            "without {} ({}): {}; grant it to the agent (the shipped unit and DaemonSet do)",
            degraded.cap.name,
            degraded.what,
            degraded.without
        );
    }
    let Prepared { release, btf_path, btf_functions, fields, btf, mut ebpf, kallsyms, lazy_cookie } =
        loader::prepare(&settings.btf, settings.limits.maps)?;
    log::info!(
        "netns-agent {} on Linux {release}; BTF {} ({} of {} fields resolved); namespaces keyed by {}",
        env!("CARGO_PKG_VERSION"),
        btf_path.display(),
        fields.iter().filter(|f| f.found.is_some()).count(),
        fields.len(),
        loader::key_source(lazy_cookie)
    );
    let outcomes = {
        let kernel = KernelView::new(&btf, &btf_functions, &fields, kallsyms);
        attach::attach_all(&mut ebpf, &kernel, settings.attach, &settings.disabled_probes, false)
    };
    // The parsed kernel BTF (tens of MiB) is only needed to load and attach.
    drop((btf, btf_functions, fields));
    host::trim_heap();
    for outcome in &outcomes {
        if outcome.attached.is_some() || outcome.disabled {
            log::info!("{}", outcome_line(outcome));
        } else {
            log::warn!("{}", outcome_line(outcome));
        }
    }

    let cleanup_attached = outcomes.iter().any(|o| o.probe.name == CLEANUP_PROBE && o.attached.is_some());
    let mut maps = FamilyMaps::take(&mut ebpf, cleanup_attached)?;
    let ring = EventRing::take(&mut ebpf)?;
    let mut namespaces = NamespaceTable::with_capacity(settings.limits.tracked_namespaces);
    let inventory = seed(&mut ebpf, &mut namespaces);
    maps.seed(namespaces.iter().map(|(cookie, _)| cookie));
    let events_file = match &settings.events_file {
        Some(path) => Some(EventsFile::open(path, settings.events_file_max_bytes)?),
        None => None,
    };
    Ok(Started {
        hangup_handled,
        http_options,
        listener,
        outcomes,
        release,
        maps,
        ring,
        namespaces,
        inventory,
        events_file,
        ebpf,
    })
}

async fn serve(started: Started, settings: Settings, reload: Reload) -> Result<(), DaemonError> {
    let Started {
        hangup_handled,
        http_options,
        listener,
        outcomes,
        release,
        maps,
        ring,
        namespaces,
        inventory,
        events_file,
        ebpf,
    } = started;
    let hangups = if hangup_handled {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(err) => {
                log::warn!("cannot handle SIGHUP ({err}): it will not reload the config");
                None
            }
        }
    } else {
        None
    };
    let stream = EventStream::register(ring)?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|err| expose::http::ListenError::new(settings.listen, err.to_string()))?;
    let agent: Shared = Arc::new(Agent {
        facts: AgentFacts {
            version: env!("CARGO_PKG_VERSION"),
            kernel: release,
            // A probe disabled on purpose has no series: the detached-probe alert is for
            // probes that failed.
            probes: outcomes
                .iter()
                .filter(|o| !o.disabled)
                .map(|o| ProbeStatus {
                    name: o.probe.name,
                    attached: o.attached.map(|m| m.as_str()),
                    modes: o.probe.variants.iter().map(|v| v.mode.as_str()).collect(),
                })
                .collect(),
        },
        model: Model::new(
            namespaces,
            Journal::new(settings.journal_max_events, events_file),
            settings.dying_after,
        ),
        maps: Mutex::new(maps),
        sources: settings.sources.clone(),
        health: Health::default(),
        rescan_soon: tokio::sync::Notify::new(),
        scanned: std::sync::atomic::AtomicBool::new(false),
        reload_failed: std::sync::atomic::AtomicBool::new(false),
        programs: crate::kernel::health::ProgramNames::of(&ebpf),
        cgroups: Mutex::new(CgroupNames::new(&settings.sources)),
    });
    let ebpf = Arc::new(Mutex::new(ebpf));
    let listener = Arc::new(Mutex::new(Some(listener)));

    let (tunables, tuned) = tokio::sync::watch::channel(settings.tunables());
    let mut specs = vec![
        events_task(Arc::clone(&agent), stream),
        housekeeping_task(Arc::clone(&agent), Arc::clone(&ebpf), inventory, tuned.clone()),
        attribution_task(Arc::clone(&agent), tuned),
        http_task(Arc::clone(&agent), listener, http_options.clone()),
    ];
    if let Some(hangups) = hangups {
        specs.push(reload_task(Arc::clone(&agent), hangups, reload, settings.clone(), tunables));
    }
    log::info!(
        "serving metrics on {}://{}{}{}{}",
        if http_options.web.tls.is_some() { "https" } else { "http" },
        settings.listen,
        http_options.telemetry_path,
        if http_options.web.users.is_empty() { "" } else { " (basic authentication)" },
        if http_options.disable_api { " (JSON API disabled)" } else { "" },
    );
    let result = tasks::supervise(specs, agent.health.clone(), shutdown_signal()).await;
    // Dropping the object detaches every link and unloads every program.
    // Every task has ended, so this is the last reference; were it not, the programs would
    // still detach when the process exits and the kernel closes its descriptors.
    drop(Arc::try_unwrap(ebpf).map(|m| m.into_inner()));
    match &result {
        Ok(()) => log::info!("stopped; all probes detached"),
        Err(err) => log::error!("stopping after a fatal error ({}); all probes detached", error_chain(err)),
    }
    result.map_err(Into::into)
}

/// Walks the kernel's namespace list once and seeds the namespace table; the inventory is
/// kept for the periodic reconciliation when it works.
fn seed(ebpf: &mut aya::Ebpf, namespaces: &mut NamespaceTable) -> Option<Inventory> {
    let walked =
        Inventory::load(ebpf).and_then(|inventory| inventory.walk(ebpf).map(|walk| (inventory, walk)));
    match walked {
        Ok((inventory, walk)) => {
            log::info!(
                "inventory: {} namespaces alive in the kernel ({} dying){}",
                walk.status.count,
                walk.status.dying,
                if walk.status.complete == 1 { "" } else { "; walk INCOMPLETE" }
            );
            namespaces.sync(&inventory.live(), Instant::now());
            Some(inventory)
        }
        Err(err @ (InventoryError::Load { .. } | InventoryError::Program(_))) => {
            log::warn!(
                "inventory unavailable, netns_alive counts only namespaces created from now on: {err}"
            );
            None
        }
        Err(err) => {
            log::warn!(
                "inventory walk failed, netns_alive counts only namespaces created from now on: {err}"
            );
            None
        }
    }
}

/// Most records applied per blocking call.
const EVENT_BATCH: usize = 256;

/// Drains the kernel's event stream into the model. Records are applied on a blocking
/// thread: a creation reads /proc to name its creator.
fn events_task(agent: Shared, stream: EventStream) -> TaskSpec {
    let stream = Arc::new(tokio::sync::Mutex::new(stream));
    TaskSpec {
        name: "events",
        on_end: OnEnd::Restart,
        make: Box::new(move || {
            let (agent, stream) = (Arc::clone(&agent), Arc::clone(&stream));
            Box::pin(async move {
                let mut stream = stream.lock().await;
                loop {
                    let batch = stream.next_batch(EVENT_BATCH).await?;
                    let agent = Arc::clone(&agent);
                    tokio::task::spawn_blocking(move || agent.apply(batch))
                        .await
                        .map_err(|err| TaskError::Failed(format!("applying events: {err}")))?;
                }
            })
        }),
    }
}

/// Expires the series of destroyed namespaces, and walks the kernel's namespace list to
/// reconcile what the teardown probes may have missed.
fn housekeeping_task(
    agent: Shared,
    ebpf: Arc<Mutex<aya::Ebpf>>,
    inventory: Option<Inventory>,
    tuned: tokio::sync::watch::Receiver<Tunables>,
) -> TaskSpec {
    let inventory = Arc::new(inventory);
    TaskSpec {
        name: "housekeeping",
        on_end: OnEnd::Restart,
        make: Box::new(move || {
            let (agent, ebpf, inventory) = (Arc::clone(&agent), Arc::clone(&ebpf), Arc::clone(&inventory));
            let mut tuned = tuned.clone();
            Box::pin(async move {
                let Tunables { inventory_interval, series_grace: grace, .. } = *tuned.borrow_and_update();
                // Expire at least every second, more often for a short grace (never a zero
                // interval).
                let expire_every = grace.clamp(Duration::from_millis(100), Duration::from_secs(1));
                let mut expire_ticker = tokio::time::interval(expire_every);
                let mut inventory_ticker = tokio::time::interval(inventory_interval);
                inventory_ticker.tick().await;
                loop {
                    tokio::select! {
                        // A reload: start over with the new periods.
                        changed = tuned.changed() => {
                            changed.map_err(|_| TaskError::Failed("the config channel closed".into()))?;
                            return Err(TaskError::Reconfigured);
                        }
                        _ = expire_ticker.tick() => agent.expire(grace),
                        _ = inventory_ticker.tick() => {
                            let (agent, ebpf, inventory) = (Arc::clone(&agent), Arc::clone(&ebpf), Arc::clone(&inventory));
                            tokio::task::spawn_blocking(move || reconcile(&agent, &ebpf, inventory.as_ref().as_ref()))
                                .await
                                .map_err(|err| TaskError::Failed(format!("inventory: {err}")))?;
                        }
                    }
                }
            })
        }),
    }
}

/// One inventory walk and reconciliation. Blocking (runs a BPF program).
fn reconcile(agent: &Agent, ebpf: &Mutex<aya::Ebpf>, inventory: Option<&Inventory>) {
    let Some(inventory) = inventory else { return };
    // One walk at a time: the lock is held across walk and reconciliation.
    let ebpf = ebpf.lock().unwrap_or_else(|p| p.into_inner());
    match inventory.walk(&ebpf).and_then(|walk| inventory.reconcile(&ebpf, &walk)) {
        Ok(0) => {}
        Ok(n) => log::info!("inventory: {n} namespaces were gone without a teardown event"),
        Err(err) => log::warn!("inventory: {err}"),
    }
    let live = inventory.live();
    agent.model.with(|state| state.namespaces.sync(&live, Instant::now()));
}

/// Rescans /proc, mounts and the CNI cache periodically, and soon after a namespace appears.
fn attribution_task(agent: Shared, tuned: tokio::sync::watch::Receiver<Tunables>) -> TaskSpec {
    TaskSpec {
        name: "attribution",
        on_end: OnEnd::Restart,
        make: Box::new(move || {
            let agent = Arc::clone(&agent);
            let mut tuned = tuned.clone();
            Box::pin(async move {
                let interval = tuned.borrow_and_update().attribution_interval;
                let mut ticker = tokio::time::interval(interval);
                let mounts = procfs::MountWatch::open(&agent.sources);
                let mount_changed = || async {
                    match &mounts {
                        Some(watch) => watch.changed().await,
                        None => std::future::pending().await,
                    }
                };
                loop {
                    tokio::select! {
                        changed = tuned.changed() => {
                            changed.map_err(|_| TaskError::Failed("the config channel closed".into()))?;
                            return Err(TaskError::Reconfigured);
                        }
                        _ = ticker.tick() => {}
                        // A new namespace: let its creator finish (mount, exec) before looking.
                        () = agent.rescan_soon.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
                        // A netns file mounted (or unmounted): names change now, not at the next
                        // tick. A runtime mounts several things per container: let it finish.
                        changed = mount_changed() => {
                            changed.map_err(|err| TaskError::Failed(format!("watching mounts: {err}")))?;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    let agent = Arc::clone(&agent);
                    tokio::task::spawn_blocking(move || agent.rescan())
                        .await
                        .map_err(|err| TaskError::Failed(format!("scan: {err}")))?;
                }
            })
        }),
    }
}

/// The HTTP server. Critical: an agent that cannot be scraped should stop and be restarted
/// by its service manager rather than run unseen.
fn http_task(
    agent: Shared,
    listener: Arc<Mutex<Option<tokio::net::TcpListener>>>,
    options: expose::http::Options,
) -> TaskSpec {
    TaskSpec {
        name: "http",
        on_end: OnEnd::Fatal,
        make: Box::new(move || {
            let (agent, options) = (Arc::clone(&agent), options.clone());
            let listener = listener.lock().unwrap_or_else(|p| p.into_inner()).take();
            Box::pin(async move {
                let listener = listener.ok_or_else(|| TaskError::Failed("listener already used".into()))?;
                expose::http::serve(listener, agent, &options).await?;
                Ok(())
            })
        }),
    }
}

/// On SIGHUP, reads the config again: the settings a reload can change apply at once, the
/// others are named as taking effect at the next start; a config that does not validate is
/// refused with its one-line error and the agent keeps running as it was (as Prometheus does).
fn reload_task(
    agent: Shared,
    hangups: tokio::signal::unix::Signal,
    reload: Reload,
    running: Settings,
    tunables: tokio::sync::watch::Sender<Tunables>,
) -> TaskSpec {
    let state = Arc::new(tokio::sync::Mutex::new((hangups, running)));
    let reload = Arc::new(reload);
    let tunables = Arc::new(tunables);
    TaskSpec {
        name: "reload",
        on_end: OnEnd::Restart,
        make: Box::new(move || {
            let (agent, state, reload, tunables) =
                (Arc::clone(&agent), Arc::clone(&state), Arc::clone(&reload), Arc::clone(&tunables));
            Box::pin(async move {
                let mut state = state.lock().await;
                let (hangups, running) = &mut *state;
                loop {
                    if hangups.recv().await.is_none() {
                        return Err(TaskError::Failed("the SIGHUP stream ended".into()));
                    }
                    let reload = Arc::clone(&reload);
                    let result = tokio::task::spawn_blocking(move || reload())
                        .await
                        .map_err(|err| TaskError::Failed(format!("reading the config: {err}")))?;
                    let new = match result {
                        Ok(new) => new,
                        Err(err) => {
                            log::error!("SIGHUP: config reload refused, still running as before: {err}");
                            agent.set_reload_outcome(false);
                            continue;
                        }
                    };
                    let changes = crate::config::changes(running, &new);
                    if changes.is_empty() {
                        log::info!("SIGHUP: config reloaded, nothing changed");
                    }
                    for change in &changes {
                        let (key, old, value) = (change.key, &change.old, &change.new);
                        if change.live {
                            log::info!("SIGHUP: config reloaded: {key} {old} -> {value}");
                        } else {
                            log::warn!(
                                "SIGHUP: config reloaded: {key} {old} -> {value} takes effect at the next start"
                            );
                        }
                    }
                    agent.model.set_dying_after(new.dying_after);
                    tunables.send_if_modified(|current| {
                        let changed = *current != new.tunables();
                        *current = new.tunables();
                        changed
                    });
                    agent.set_reload_outcome(true);
                    // What runs now: live settings from the new config, the rest as started.
                    let live = new.tunables();
                    running.series_grace = live.series_grace;
                    running.inventory_interval = live.inventory_interval;
                    running.attribution_interval = live.attribution_interval;
                    running.dying_after = live.dying_after;
                }
            })
        }),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            // Without handlers the default action (exit) still applies; the kernel detaches
            // the programs when the process's file descriptors close.
            log::warn!("cannot handle SIGTERM/SIGINT ({err}); they will end the agent abruptly");
            return std::future::pending().await;
        }
    };
    let (mut term, mut int) = (term, int);
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!("{name} received, shutting down");
}
