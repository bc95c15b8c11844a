//! `netns-agent check`: tries every attach mode of every probe on this kernel, for real, and
//! explains which one `run` would pick and why the others cannot work. Detaches everything
//! before it returns.

use std::fmt::Write as _;

use crate::{
    config::Settings,
    kernel::{
        attach::{self, KernelView, Policy},
        host,
        inventory::Inventory,
        layout::ResolvedField,
        loader::{self, Prepared},
        privileges,
        probes::Mode,
    },
};

/// The report, and whether `run` would attach anything under the settings' policy.
pub fn run(settings: &Settings) -> anyhow::Result<(String, bool)> {
    let Prepared { release, btf_path, btf_functions, fields, btf, mut ebpf, kallsyms, lazy_cookie } =
        loader::prepare(&settings.btf, settings.limits.maps)?;
    let kernel = KernelView::new(&btf, &btf_functions, &fields, kallsyms);
    let outcomes = attach::attach_all(&mut ebpf, &kernel, Policy::Auto, &[], true);

    let mut out = String::new();
    let resolved = fields.iter().filter(|f| f.found.is_some()).count();
    let _ = writeln!(out, "kernel        Linux {release}");
    let _ = writeln!(
        out,
        "BTF           {}: present, {resolved} of {} fields resolved{}",
        btf_path.display(),
        fields.len(),
        missing_fields(&fields)
    );
    let _ = writeln!(out, "namespaces    keyed by {}", loader::key_source(lazy_cookie));
    let _ = writeln!(
        out,
        "kprobes       {}",
        kernel.no_kprobes.as_deref().map_or("available".to_owned(), |why| format!("unavailable: {why}"))
    );
    let _ = writeln!(out, "fentry/fexit  {}", mode_summary(&outcomes, Mode::Fentry));
    let _ = writeln!(
        out,
        "tracepoints   {}",
        match &kernel.tracefs {
            Ok(dir) => format!(
                "tracefs at {dir}; BTF tracepoints {}",
                if resolved > 0 { "usable" } else { "unusable" }
            ),
            Err(why) => format!("classic tracepoints unavailable: {why}"),
        }
    );
    let inventory = match Inventory::load(&mut ebpf).and_then(|inv| inv.walk(&ebpf)) {
        Ok(walk) => format!(
            "available: {} namespaces alive now{}",
            walk.status.count,
            if walk.status.complete == 1 { "" } else { " (walk incomplete)" }
        ),
        Err(err) => {
            format!("unavailable ({err}): netns_alive will count only namespaces created after start")
        }
    };
    let _ = writeln!(out, "inventory     {inventory}");
    let _ = writeln!(out, "capabilities  {}", capabilities(privileges::own_caps()));
    let _ = writeln!(out);

    for outcome in &outcomes {
        let policy = match settings.attach {
            Policy::Auto => outcome.attached.map_or("none: no mode works here".to_owned(), |m| m.to_string()),
            Policy::Force(mode) => match outcome.attempts.iter().find(|(m, _)| *m == mode) {
                Some((_, Ok(()))) => format!("{mode} (forced)"),
                _ => format!("none ({mode} forced and unavailable)"),
            },
        };
        let _ = writeln!(out, "{}: {}", outcome.probe.name, outcome.probe.summary);
        let _ = writeln!(out, "  run would use: {policy}");
        for variant in outcome.probe.variants {
            let status = match outcome.attempts.iter().find(|(m, _)| *m == variant.mode) {
                Some((_, Ok(()))) => "works".to_owned(),
                Some((_, Err(why))) => format!("fails: {why}"),
                None => "not tried".to_owned(),
            };
            let _ = writeln!(out, "  {:<10} {status}", variant.mode.as_str());
            let _ = writeln!(out, "  {:<10} sees: {}", "", variant.sees);
        }
    }
    drop(ebpf);
    let usable = outcomes.iter().any(|o| match settings.attach {
        Policy::Auto => o.attached.is_some(),
        Policy::Force(mode) => o.attempts.iter().any(|(m, r)| *m == mode && r.is_ok()),
    });
    Ok((out, usable))
}

/// Which of the capabilities the agent uses are granted, and what the missing ones cost.
fn capabilities(caps: u64) -> String {
    let missing: Vec<&privileges::Use> = privileges::USES.iter().filter(|u| !u.cap.is_in(caps)).collect();
    let kept = privileges::names(caps & privileges::running_set()).join(", ");
    if missing.is_empty() {
        return format!("all {} the agent uses; after start-up it keeps {kept}", privileges::USES.len());
    }
    let lines: Vec<String> =
        missing.iter().map(|u| format!("without {}: {}", u.cap.name, u.without)).collect();
    lines.join("\n              ")
}

fn missing_fields(fields: &[ResolvedField]) -> String {
    let missing: Vec<&str> = fields.iter().filter(|f| f.found.is_none()).map(|f| f.name).collect();
    if missing.is_empty() { String::new() } else { format!(" (missing: {})", missing.join(", ")) }
}

fn mode_summary(outcomes: &[attach::ProbeOutcome], mode: Mode) -> String {
    let results: Vec<&Result<(), String>> =
        outcomes.iter().flat_map(|o| o.attempts.iter()).filter(|(m, _)| *m == mode).map(|(_, r)| r).collect();
    match results.iter().find_map(|r| r.as_ref().err()) {
        None if !results.is_empty() => "available".to_owned(),
        None => "not tried".to_owned(),
        Some(why) if results.iter().all(|r| r.is_err()) => format!("unavailable: {why}"),
        Some(why) => format!("partly available: {why}"),
    }
}

/// Attaches the reference program `name` on `fib_table_lookup` (a BTF tracepoint or, for
/// `bench_empty_fexit`, an fexit; `bench_empty_fib6` on `fib6_table_lookup`) and waits for
/// SIGINT/SIGTERM.
pub fn bench_floor(settings: &Settings, name: &str) -> anyhow::Result<()> {
    use aya::programs::Program;
    let Prepared { mut ebpf, btf, .. } = loader::prepare(&settings.btf, settings.limits.maps)?;
    let tracepoint = if name == "bench_empty_fib6" { "fib6_table_lookup" } else { "fib_table_lookup" };
    match ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("{name} missing from the object"))? {
        Program::BtfTracePoint(program) => {
            program.load(tracepoint, &btf)?;
            program.attach()?;
        }
        Program::FExit(program) => {
            program.load("fib_table_lookup", &btf)?;
            program.attach()?;
        }
        _ => anyhow::bail!("{name} is neither a BTF tracepoint nor an fexit program (build mismatch)"),
    }
    println!("attached {name}");
    host::wait_for_termination()?;
    Ok(())
}
