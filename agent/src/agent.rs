//! `netns-agent run`: load, attach, seed, serve, and detach everything on SIGINT/SIGTERM.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{Btf, Ebpf, Endianness};

use crate::{
    attach::{self, KernelView, ProbeOutcome},
    config::Settings,
    events::{self, EventMaps},
    host,
    inventory::Inventory,
    journal::{EventsFile, Journal},
    kernel_layout::{KernelLayout, ResolvedField},
    lifecycle::LifecycleMaps,
    loader, maps,
    moves::MoveMaps,
    namespaces::NamespaceTable,
    probes::NETNS_CLEANUP,
    routes::RouteMaps,
    state::{AgentState, Ownership, lock},
};

/// Everything start-up learns about the kernel, and the loaded (not yet attached) object.
pub struct Prepared {
    pub release: String,
    /// The BTF file the offsets came from.
    pub btf_path: std::path::PathBuf,
    /// Functions the BTF describes, among those the probes hook.
    pub btf_functions: std::collections::HashSet<String>,
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
    let btf_functions = crate::probes::all_functions()
        .into_iter()
        .filter(|f| layout.has_function(f))
        .map(str::to_owned)
        .collect();
    // Two parses of the kernel BTF (tens of MiB each) must not be alive at once.
    drop(layout);
    let btf = Btf::parse_file(&settings.btf, Endianness::default())
        .with_context(|| format!("cannot parse BTF {}", settings.btf.display()))?;
    let kallsyms = host::kallsyms_functions(&crate::probes::all_functions());
    let cleanup_net = kallsyms.get("cleanup_net").copied().unwrap_or(0);
    let ebpf = loader::load(&offsets, cleanup_net, &btf, &settings.limits)?;
    Ok(Prepared { release, btf_path: settings.btf.clone(), btf_functions, fields, btf, ebpf, kallsyms })
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
    let Prepared { release, btf_path, btf_functions, fields, btf, mut ebpf, kallsyms } = prepare(&settings)?;
    log::info!(
        "netns-agent {} on Linux {release}; BTF {} ({} of {} fields resolved)",
        env!("CARGO_PKG_VERSION"),
        btf_path.display(),
        fields.iter().filter(|f| f.found.is_some()).count(),
        fields.len()
    );

    let outcomes = {
        let kernel = KernelView::new(&btf, &btf_functions, &fields, kallsyms);
        attach::attach_all(&mut ebpf, &kernel, settings.attach, false)
    };
    // The parsed kernel BTF (tens of MiB) is only needed to load and attach; hand the memory
    // back to the system rather than keep it in the allocator's free lists.
    drop((btf, btf_functions, fields));
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
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

    let events_file = match &settings.events_file {
        Some(path) => Some(EventsFile::open(path, settings.events_file_max_bytes)?),
        None => None,
    };
    let state = Arc::new(AgentState {
        kernel: release,
        probes: outcomes
            .iter()
            .map(|o| (o.probe.name, o.attached, o.probe.variants.iter().map(|v| v.mode).collect()))
            .collect(),
        lifecycle: lifecycle_maps,
        events_lost: event_maps.lost,
        cleanup: maps::take(&mut ebpf, "CLEANUP_BATCHES")?,
        routes: Mutex::new(RouteMaps::take(&mut ebpf)?),
        moves: Mutex::new(MoveMaps::take(&mut ebpf)?),
        namespaces: Mutex::new(namespaces),
        ownership: Mutex::new(Ownership::default()),
        journal: Mutex::new(Journal::new(settings.journal_max_events, events_file)),
        sources: settings.sources.clone(),
        dying_after: settings.dying_after,
        cleanup_attached: outcomes.iter().any(|o| o.probe.name == NETNS_CLEANUP.name && o.attached.is_some()),
        rescan_soon: tokio::sync::Notify::new(),
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
                tokio::select! {
                    _ = ticker.tick() => {}
                    // A new namespace: let its creator finish (mount, exec) before looking.
                    _ = state.rescan_soon.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                let state = Arc::clone(&state);
                let _ = tokio::task::spawn_blocking(move || state.rescan()).await;
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
