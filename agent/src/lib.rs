//! netns-agent: eBPF observability for network namespaces.
//!
//! Each event family has one stem used across the crates: `lifecycle` (creation, setup,
//! teardown), `inventory` (the walk of every namespace alive), `moves` (devices changing
//! namespace), `routes` (route lookups), `events` (the ring buffer they share). The kernel side of each lives
//! in `ebpf/src/<stem>.rs`, shared types in `common/src/<stem>.rs`, and the user side here.

pub mod agent;
pub mod api;
pub mod attach;
pub mod attribution;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod events;
pub mod host;
pub mod http;
pub mod inventory;
pub mod journal;
pub mod kernel_layout;
pub mod labels;
pub mod lifecycle;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod moves;
pub mod namespaces;
pub mod probes;
pub mod routes;
pub mod state;
pub mod states;

use config::{FileConfig, Overrides, Settings};

/// Settings for a command from its config file and flags.
pub fn settings(
    common: &cli::CommonArgs,
    listen: Option<String>,
    events_file: Option<std::path::PathBuf>,
) -> Result<Settings, config::ConfigError> {
    let file = match &common.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    Settings::resolve(file, Overrides { listen, attach: common.attach, btf: common.btf.clone(), events_file })
}

/// `ls`, `show` and `events`.
pub fn on_call(command: cli::Command) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let print_json = |value: &dyn erased::Json| -> anyhow::Result<()> {
        println!("{}", value.to_json()?);
        Ok(())
    };
    match command {
        cli::Command::Ls(args) => {
            let c = client::Client::new(&args.agent.agent);
            let keep = |mut all: Vec<api::NamespaceView>| {
                all.retain(|ns| args.all || ns.state != states::State::Gone.as_str());
                all
            };
            let first = keep(c.namespaces()?);
            let first_at = Instant::now();
            let (second, seconds) = if args.interval > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(args.interval));
                (keep(c.namespaces()?), first_at.elapsed().as_secs_f64())
            } else {
                (first.clone(), 0.0)
            };
            if args.agent.json {
                return print_json(&second);
            }
            let mut rows = client::rows(&second, &first, seconds);
            client::sort_rows(&mut rows, args.sort);
            print!("{}", client::table(&rows));
        }
        cli::Command::Show(args) => {
            let c = client::Client::new(&args.agent.agent);
            let ns = client::find(&c, &args.namespace)?;
            let journal = c.events(Some(ns.netns), 0, 10_000)?.events;
            if args.agent.json {
                return print_json(&serde_json::json!({ "namespace": ns, "events": journal }));
            }
            print!("{}", client::describe(&ns, &journal));
        }
        cli::Command::Events(args) => {
            let c = client::Client::new(&args.agent.agent);
            let mut since = 0;
            loop {
                let view = c.events(args.netns, since, args.limit)?;
                for e in &view.events {
                    if args.agent.json {
                        println!("{}", serde_json::to_string(e)?);
                    } else {
                        println!("{}", client::event_line(e));
                    }
                }
                since = view.last_seq.max(since);
                if !args.follow {
                    break;
                }
                use std::io::Write as _;
                std::io::stdout().flush()?;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        cli::Command::Run(_) | cli::Command::Check(_) | cli::Command::BenchFloor(_) => {
            anyhow::bail!("not an on-call command")
        }
    }
    Ok(())
}

mod erased {
    /// Anything serialisable, printed as pretty JSON.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string_pretty(self)
        }
    }
}
