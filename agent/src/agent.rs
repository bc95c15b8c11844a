//! `netns-agent run`: load, attach, seed, serve, and detach everything on SIGINT/SIGTERM.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf, Endianness,
    maps::{Array, MapData},
};
use netns_agent_common::{events::kind, lifecycle::LifecycleEvent};
use prometheus::proto::MetricFamily;

use crate::{
    attach::{self, KernelView, ProbeOutcome},
    attribution::{self, Owner, Sources},
    config::Settings,
    events::{self, Event, EventMaps},
    host,
    inventory::Inventory,
    kernel_layout::{KernelLayout, ResolvedField},
    lifecycle::{self, LifecycleMaps},
    loader, metrics,
    moves::{self, MoveMaps},
    namespaces::NamespaceTable,
    probes::Mode,
    routes::RouteMaps,
};

/// Everything start-up learns about the kernel, and the loaded (not yet attached) object.
pub struct Prepared {
    pub release: String,
    pub layout: KernelLayout,
    pub fields: Vec<ResolvedField>,
    pub btf: Btf,
    pub ebpf: Ebpf,
    /// Addresses of the kernel functions the probes use.
    pub kallsyms: HashMap<String, u64>,
}

/// The checks and loading shared by `run` and `check`. Each failure is one line that names
/// the problem and the fix.
pub fn prepare(settings: &Settings) -> anyhow::Result<Prepared> {
    host::check_privileges()?;
    let release = host::kernel_release()?;
    host::check_kernel_version(&release)?;
    let layout = KernelLayout::open(&settings.btf)?;
    let (offsets, fields) = layout.resolve();
    let btf = Btf::parse_file(&settings.btf, Endianness::default())
        .with_context(|| format!("cannot parse BTF {}", settings.btf.display()))?;
    let kallsyms = host::kallsyms_functions(&crate::probes::all_functions());
    let cleanup_net = kallsyms.get("cleanup_net").copied().unwrap_or(0);
    let ebpf = loader::load(&offsets, cleanup_net, &btf, &settings.limits)?;
    Ok(Prepared { release, layout, fields, btf, ebpf, kallsyms })
}

/// Locks a mutex, recovering from a panicked holder (the data stays usable).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `/metrics` reads, and what the event and housekeeping tasks update.
pub struct AgentState {
    kernel: String,
    probes: Vec<(&'static str, Option<Mode>, Vec<Mode>)>,
    lifecycle: LifecycleMaps,
    events_lost: Array<MapData, u64>,
    routes: Mutex<RouteMaps>,
    moves: Mutex<MoveMaps>,
    pub namespaces: Mutex<NamespaceTable>,
    /// Owners of namespaces by inode (processes, names, container, pod).
    pub owners: Mutex<HashMap<u32, Owner>>,
    sources: Sources,
}

impl AgentState {
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let mut info = metrics::Family::new(&metrics::AGENT_INFO);
        info.add(&[env!("CARGO_PKG_VERSION"), &self.kernel], 1.0);
        out.extend(info.finish());
        let mut attached = metrics::Family::new(&metrics::PROBE_ATTACHED);
        for (probe, mode, modes) in &self.probes {
            for m in modes {
                attached.add(&[probe, m.as_str()], if *mode == Some(*m) { 1.0 } else { 0.0 });
            }
        }
        out.extend(attached.finish());
        let mut lost = metrics::Family::new(&metrics::EVENTS_LOST);
        lost.add(&[], self.events_lost.get(&0, 0).unwrap_or(0) as f64);
        out.extend(lost.finish());
        self.lifecycle.collect(&mut out);
        let namespaces = lock(&self.namespaces);
        self.collect_owners(&namespaces, &mut out);
        lock(&self.moves).collect(&namespaces, &mut out);
        lock(&self.routes).collect(&namespaces, &mut out);
        out
    }

    /// `netns_info` and `netns_processes`: one series per tracked namespace.
    fn collect_owners(&self, namespaces: &NamespaceTable, out: &mut Vec<MetricFamily>) {
        let owners = lock(&self.owners);
        let mut info = metrics::Family::new(&metrics::NETNS_INFO);
        let mut processes = metrics::Family::new(&metrics::NETNS_PROCESSES);
        let none = Owner::default();
        for (_, ns) in namespaces.iter() {
            let owner = owners.get(&ns.inum).filter(|_| ns.destroyed_at.is_none()).unwrap_or(&none);
            let netns = ns.inum.to_string();
            let (pid, comm) =
                owner.main.as_ref().map_or((String::new(), ""), |m| (m.pid.to_string(), m.comm.as_str()));
            info.add(
                &[
                    &netns,
                    &owner.name_label(),
                    comm,
                    &pid,
                    &owner.container_id,
                    &owner.pod,
                    &owner.pod_namespace,
                ],
                1.0,
            );
            processes.add(&[&netns], f64::from(owner.processes));
        }
        out.extend(info.finish());
        out.extend(processes.finish());
        let mut dropped = metrics::Family::new(&metrics::NAMESPACES_DROPPED);
        dropped.add(&[], namespaces.dropped as f64);
        out.extend(dropped.finish());
    }

    /// Rescans /proc, mounts and the CNI cache.
    fn rescan_owners(&self) {
        let owners = attribution::scan(&self.sources);
        *lock(&self.owners) = owners;
    }

    /// A namespace was just created: note the process in it now, before it can exit (the
    /// next full scan corrects everything else).
    fn note_creator(&self, event: &LifecycleEvent) {
        let pid = if event.member_pid != 0 { event.member_pid } else { event.pid };
        let Some((inum, info, container)) = attribution::process(&self.sources, pid as i32) else {
            return;
        };
        if inum != event.inum {
            return; // a clone's parent: the child, not yet known here, is the member
        }
        let mut owners = lock(&self.owners);
        let owner = owners.entry(inum).or_default();
        if owner.main.is_none() {
            owner.main = Some(info);
            owner.processes = owner.processes.max(1);
            owner.container_id = container;
        }
    }

    pub fn render(&self) -> String {
        metrics::render(&self.gather())
    }

    /// Applies one kernel event.
    fn on_event(&self, event: Event) {
        match event {
            Event::Lifecycle(e) => {
                log::debug!("{}", lifecycle::describe(&e));
                match e.kind {
                    kind::NETNS_CREATED => {
                        lock(&self.namespaces).alive(e.cookie, e.inum);
                        self.note_creator(&e);
                    }
                    kind::NETNS_DESTROYED => {
                        lock(&self.namespaces).destroyed(e.cookie, e.inum, Instant::now())
                    }
                    _ => {}
                }
            }
            Event::Move(e) => log::info!("{}", moves::describe(&e)),
        }
    }

    /// Drops the series of namespaces destroyed longer than `grace` ago, in user space and in
    /// the kernel's counters.
    fn expire(&self, grace: Duration) {
        let removed: HashSet<u64> = {
            let mut namespaces = lock(&self.namespaces);
            namespaces.expire(grace, Instant::now());
            namespaces.take_removed().into_iter().collect()
        };
        if !removed.is_empty() {
            lock(&self.routes).forget(&removed);
            lock(&self.moves).forget(&removed);
        }
    }
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
        None => format!("probe {}: NOT attached", outcome.probe.name),
    };
    if failures.is_empty() { head } else { format!("{head}; {}", failures.join("; ")) }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Bind first: a taken port should fail before any probe touches the kernel.
    let listener = crate::http::bind(settings.listen).await?;
    let Prepared { release, layout, fields, btf, mut ebpf, kallsyms } = prepare(&settings)?;
    log::info!(
        "netns-agent {} on Linux {release}; BTF {} ({} of {} fields resolved)",
        env!("CARGO_PKG_VERSION"),
        layout.path().display(),
        fields.iter().filter(|f| f.found.is_some()).count(),
        fields.len()
    );

    let kernel = KernelView::new(&btf, &layout, &fields, kallsyms);
    let outcomes = attach::attach_all(&mut ebpf, &kernel, settings.attach, false);
    for outcome in &outcomes {
        if outcome.attached.is_some() {
            log::info!("{}", outcome_line(outcome));
        } else {
            log::warn!("{}", outcome_line(outcome));
        }
    }

    let lifecycle_maps = LifecycleMaps::take(&mut ebpf)?;
    let event_maps = EventMaps::take(&mut ebpf)?;
    let mut namespaces = NamespaceTable::with_capacity(settings.limits.tracked_namespaces);
    let inventory = match Inventory::load(&mut ebpf) {
        Ok(inventory) => match inventory.walk(&ebpf) {
            Ok(walk) => {
                log::info!(
                    "inventory: {} namespaces alive in the kernel ({} dying){}",
                    walk.status.count,
                    walk.status.dying,
                    if walk.status.complete == 1 { "" } else { "; walk INCOMPLETE" }
                );
                namespaces.sync(&inventory.live(), Instant::now());
                Some(inventory)
            }
            Err(err) => {
                log::warn!(
                    "inventory walk failed, netns_alive counts only namespaces created from now on: {err}"
                );
                None
            }
        },
        Err(err) => {
            log::warn!(
                "inventory unavailable, netns_alive counts only namespaces created from now on: {err}"
            );
            None
        }
    };

    let state = Arc::new(AgentState {
        kernel: release,
        probes: outcomes
            .iter()
            .map(|o| (o.probe.name, o.attached, o.probe.variants.iter().map(|v| v.mode).collect()))
            .collect(),
        lifecycle: lifecycle_maps,
        events_lost: event_maps.lost,
        routes: Mutex::new(RouteMaps::take(&mut ebpf)?),
        moves: Mutex::new(MoveMaps::take(&mut ebpf)?),
        namespaces: Mutex::new(namespaces),
        owners: Mutex::new(HashMap::new()),
        sources: settings.sources.clone(),
    });
    let ebpf = Arc::new(Mutex::new(ebpf));

    let events_task = {
        let state = Arc::clone(&state);
        tokio::spawn(events::consume(event_maps.ring, move |event| state.on_event(event)))
    };
    let housekeeping_task = {
        let state = Arc::clone(&state);
        let ebpf = Arc::clone(&ebpf);
        let (interval, grace) = (settings.inventory_interval, settings.series_grace);
        tokio::spawn(async move {
            let mut expire_ticker = tokio::time::interval(Duration::from_secs(1).min(grace));
            let mut inventory_ticker = tokio::time::interval(interval);
            inventory_ticker.tick().await;
            loop {
                tokio::select! {
                    _ = expire_ticker.tick() => state.expire(grace),
                    _ = inventory_ticker.tick() => {
                        let Some(inventory) = &inventory else { continue };
                        let ebpf = lock(&ebpf);
                        match inventory.walk(&ebpf).and_then(|walk| inventory.reconcile(&ebpf, &walk)) {
                            Ok(0) => {}
                            Ok(n) => log::info!("inventory: {n} namespaces were gone without a teardown event"),
                            Err(err) => log::warn!("inventory: {err}"),
                        }
                        lock(&state.namespaces).sync(&inventory.live(), Instant::now());
                    }
                }
            }
        })
    };

    let attribution_task = {
        let state = Arc::clone(&state);
        let interval = settings.attribution_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let state = Arc::clone(&state);
                let _ = tokio::task::spawn_blocking(move || state.rescan_owners()).await;
            }
        })
    };

    log::info!("serving metrics on http://{}/metrics", settings.listen);
    axum::serve(listener, crate::http::router(Arc::clone(&state)))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;

    events_task.abort();
    attribution_task.abort();
    housekeeping_task.abort();
    let _ = housekeeping_task.await;
    // Dropping the object detaches every link and unloads every program.
    drop(Arc::try_unwrap(ebpf).map(|m| m.into_inner()));
    log::info!("stopped; all probes detached");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!("{name} received, shutting down");
}
