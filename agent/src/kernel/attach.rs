//! The attach engine: for each probe in the registry, try its variants (best first, or only
//! the forced mode) until one attaches completely. A probe that cannot attach is reported
//! and skipped; it never stops the others.

use std::collections::{HashMap, HashSet};

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};

use super::{
    host,
    layout::ResolvedField,
    probes::{Hook, Mode, PROBES, ProbeSpec, Variant},
};
use crate::errors::error_chain;

/// Which modes the engine may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Each probe takes its best mode that works here.
    Auto,
    /// Every probe uses this mode or stays detached (the tests use this).
    Force(Mode),
}

/// What happened to one probe.
#[derive(Debug)]
pub struct ProbeOutcome {
    pub probe: &'static ProbeSpec,
    /// The mode that attached, if any.
    pub attached: Option<Mode>,
    /// Left detached on purpose (the `disabled_probes` setting): nothing was tried.
    pub disabled: bool,
    /// Every mode tried, with the reason it failed.
    pub attempts: Vec<(Mode, Result<(), String>)>,
}

/// What the engine knows about the kernel.
pub struct KernelView<'a> {
    pub btf: &'a Btf,
    /// Functions the kernel's BTF describes (fentry/fexit targets), among those the probes use.
    pub btf_functions: &'a HashSet<String>,
    pub fields: &'a [ResolvedField],
    /// Kernel functions by name, with their addresses.
    pub kallsyms: HashMap<String, u64>,
    pub tracefs: Result<&'static str, String>,
    /// Why kprobes cannot work, if they cannot.
    pub no_kprobes: Option<String>,
}

impl<'a> KernelView<'a> {
    pub fn new(
        btf: &'a Btf,
        btf_functions: &'a HashSet<String>,
        fields: &'a [ResolvedField],
        kallsyms: HashMap<String, u64>,
    ) -> Self {
        Self {
            btf,
            btf_functions,
            fields,
            kallsyms,
            tracefs: host::ensure_tracefs(),
            no_kprobes: host::kprobe_support(),
        }
    }
}

/// Attaches every probe under `policy` but those `disabled`. With `try_all`, every variant is
/// tried even after one attached (`check` uses this to report each mode).
pub fn attach_all(
    ebpf: &mut Ebpf,
    kernel: &KernelView<'_>,
    policy: Policy,
    disabled: &[&str],
    try_all: bool,
) -> Vec<ProbeOutcome> {
    PROBES
        .iter()
        .map(|probe| {
            let disabled = disabled.contains(&probe.name);
            let mut outcome = ProbeOutcome { probe, attached: None, disabled, attempts: Vec::new() };
            if disabled {
                return outcome;
            }
            for variant in probe.variants {
                if let Policy::Force(mode) = policy
                    && variant.mode != mode
                {
                    continue;
                }
                if outcome.attached.is_some() && !try_all {
                    break;
                }
                let result = attach_variant(ebpf, kernel, variant);
                if result.is_ok() && outcome.attached.is_none() {
                    outcome.attached = Some(variant.mode);
                }
                outcome.attempts.push((variant.mode, result));
            }
            outcome
        })
        .collect()
}

fn attach_variant(ebpf: &mut Ebpf, kernel: &KernelView<'_>, variant: &Variant) -> Result<(), String> {
    let missing: Vec<&str> = variant
        .fields
        .iter()
        .copied()
        .filter(|name| kernel.fields.iter().any(|f| f.name == *name && f.found.is_none()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("this kernel's BTF lacks fields {}", missing.join(", ")));
    }
    let mut done: Vec<&str> = Vec::new();
    for hook in variant.hooks {
        if let Err(err) = attach_hook(ebpf, kernel, hook) {
            // All or nothing: a half-attached variant would count half the events.
            for program in done.into_iter().chain([hook.program()]) {
                if let Some(p) = ebpf.program_mut(program) {
                    let _ = unload(p);
                }
            }
            return Err(err);
        }
        done.push(hook.program());
    }
    Ok(())
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

fn pick_function(hook: &Hook, exists: impl Fn(&str) -> bool, source: &str) -> Result<&'static str, String> {
    hook.functions()
        .iter()
        .copied()
        .find(|f| exists(f))
        .ok_or_else(|| format!("{} not found in {source}", hook.functions().join(" or ")))
}

fn attach_hook(ebpf: &mut Ebpf, kernel: &KernelView<'_>, hook: &Hook) -> Result<(), String> {
    let name = hook.program();
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object (build mismatch)"))?;
    let context = |what: &str, err: ProgramError| format!("{what}: {}", describe(&err));
    match *hook {
        Hook::Fentry { .. } => {
            let function = pick_function(hook, |f| kernel.btf_functions.contains(f), "BTF")?;
            let p: &mut FEntry = program.try_into().map_err(|e| context("program type", e))?;
            p.load(function, kernel.btf).map_err(|e| context(&format!("fentry {function} load"), e))?;
            p.attach().map_err(|e| context(&format!("fentry {function} attach"), e))?;
        }
        Hook::Fexit { .. } => {
            let function = pick_function(hook, |f| kernel.btf_functions.contains(f), "BTF")?;
            let p: &mut FExit = program.try_into().map_err(|e| context("program type", e))?;
            p.load(function, kernel.btf).map_err(|e| context(&format!("fexit {function} load"), e))?;
            p.attach().map_err(|e| context(&format!("fexit {function} attach"), e))?;
        }
        Hook::Kprobe { .. } | Hook::Kretprobe { .. } => {
            if let Some(why) = &kernel.no_kprobes {
                return Err(why.clone());
            }
            let function = pick_function(hook, |f| kernel.kallsyms.contains_key(f), "/proc/kallsyms")?;
            let p: &mut KProbe = program.try_into().map_err(|e| context("program type", e))?;
            p.load().map_err(|e| context(&format!("kprobe {function} load"), e))?;
            p.attach(function, 0).map_err(|e| context(&format!("kprobe {function} attach"), e))?;
        }
        Hook::BtfTracepoint { tracepoint, .. } => {
            let p: &mut BtfTracePoint = program.try_into().map_err(|e| context("program type", e))?;
            p.load(tracepoint, kernel.btf).map_err(|e| context(&format!("tp_btf {tracepoint} load"), e))?;
            p.attach().map_err(|e| context(&format!("tp_btf {tracepoint} attach"), e))?;
        }
        Hook::Tracepoint { category, name: tp, .. } => {
            let tracefs = kernel.tracefs.as_ref().map_err(Clone::clone)?;
            if !host::has_tracepoint(tracefs, category, tp) {
                return Err(format!("tracepoint {category}:{tp} does not exist on this kernel"));
            }
            let p: &mut TracePoint = program.try_into().map_err(|e| context("program type", e))?;
            p.load().map_err(|e| context(&format!("tracepoint {category}:{tp} load"), e))?;
            p.attach(category, tp).map_err(|e| context(&format!("tracepoint {category}:{tp} attach"), e))?;
        }
    }
    Ok(())
}

/// A one-line reason for a program error; the verifier log goes to the debug log.
/// What an unknown helper number in a verifier message is, and from which kernel: older
/// verifiers print only the number.
fn missing_helper(reason: &str) -> &'static str {
    const HELPERS: &[(&str, &str)] = &[
        ("unknown#181", " (bpf_loop, Linux 5.17+)"),
        ("unknown#183", " (bpf_get_func_arg, Linux 5.17+)"),
        ("unknown#184", " (bpf_get_func_ret, Linux 5.17+)"),
    ];
    HELPERS
        .iter()
        .find(|(number, _)| reason.ends_with(number) || reason.contains(&format!("{number} ")))
        .map_or("", |(_, name)| name)
}

pub fn describe(err: &ProgramError) -> String {
    if let ProgramError::LoadError { io_error, verifier_log } = err {
        let log = verifier_log.to_string();
        log::debug!("verifier log:\n{log}");
        let statistics = ["processed ", "verification time", "stack depth", "max_states_per_insn"];
        let reason = log
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty() && !statistics.iter().any(|s| l.starts_with(s)));
        return match reason {
            Some(reason) => {
                format!("the verifier rejected it ({io_error}): {reason}{}", missing_helper(reason))
            }
            None => format!("the kernel refused to load it ({io_error}) before verification"),
        };
    }
    error_chain(err)
}

#[cfg(test)]
mod helper_tests {
    use super::missing_helper;

    #[test]
    fn unknown_helpers_are_named_with_their_kernel() {
        assert_eq!(missing_helper("invalid func unknown#184"), " (bpf_get_func_ret, Linux 5.17+)");
        assert_eq!(missing_helper("invalid func unknown#181"), " (bpf_loop, Linux 5.17+)");
        assert_eq!(missing_helper("invalid func unknown#1840"), "");
        assert_eq!(missing_helper("R1 type=ctx expected=fp"), "");
    }
}
