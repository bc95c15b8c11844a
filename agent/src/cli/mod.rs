//! The commands: `run` (the daemon), `check`, and the on-call commands `ls`, `show` and
//! `events`, which talk to a running agent only through its JSON API (the types in
//! `model::view`).

pub mod args;
pub mod check;
pub mod client;
pub mod render;

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use args::{Cli, Command, CommonArgs};
use client::Client;

use crate::{
    config::{FileConfig, Overrides, Settings},
    model::{journal::Filter, states::State, view::NamespaceView},
};

/// Settings for a command from its config file and flags.
pub fn settings(
    common: &CommonArgs,
    run: Option<&args::RunArgs>,
) -> Result<Settings, crate::config::ConfigError> {
    let file = match &common.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    Settings::resolve(
        file,
        Overrides {
            listen: run.and_then(|r| r.listen.clone()),
            attach: common.attach,
            btf: common.btf.clone(),
            events_file: run.and_then(|r| r.events_file.clone()),
            web_config_file: run.and_then(|r| r.web_config_file.clone()),
            web_disable_api: run.is_some_and(|r| r.web_disable_api),
        },
    )
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let settings = settings(&args.common, Some(&args))?;
            crate::daemon::run(settings)?;
        }
        Command::Check(args) => print(&check::run(&settings(&args, None)?)?)?,
        Command::BenchFloor(args) => check::bench_floor(&settings(&args, None)?)?,
        Command::Ls(args) => {
            let c = Client::new(&args.agent.agent);
            let keep = |mut all: Vec<NamespaceView>| {
                all.retain(|ns| args.all || ns.state != State::Gone.as_str());
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
                return print(&format!("{}\n", serde_json::to_string_pretty(&second)?));
            }
            let mut rows = render::rows(&second, &first, seconds);
            render::sort_rows(&mut rows, args.sort);
            print(&render::table(&rows))?;
        }
        Command::Show(args) => {
            let c = Client::new(&args.agent.agent);
            let ns = client::find(&c, &args.namespace)?;
            // The journal of this namespace, by its cookie: an earlier namespace with the same
            // inode number is another namespace.
            let journal = c.events(&Filter { netns: None, cookie: Some(ns.cookie) }, 0, 10_000)?.events;
            let earlier: std::collections::BTreeSet<u64> = c
                .events(&Filter { netns: Some(ns.netns), cookie: None }, 0, 10_000)?
                .events
                .iter()
                .filter(|e| e.netns == Some(ns.netns))
                .filter_map(|e| e.cookie)
                .filter(|cookie| *cookie != ns.cookie)
                .collect();
            if args.agent.json {
                let value = serde_json::json!({ "namespace": ns, "events": journal });
                return print(&format!("{}\n", serde_json::to_string_pretty(&value)?));
            }
            let mut text = render::describe(&ns, &journal);
            if !earlier.is_empty() {
                text.push_str(&format!(
                    "\n{} earlier namespace(s) had inode {} (cookies {}): netns-agent events --netns {}\n",
                    earlier.len(),
                    ns.netns,
                    earlier.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                    ns.netns
                ));
            }
            print(&text)?;
        }
        Command::Events(args) => {
            let c = Client::new(&args.agent.agent);
            let mut since = 0;
            loop {
                let view = c.events(&Filter { netns: args.netns, cookie: None }, since, args.limit)?;
                let mut text = String::new();
                for e in &view.events {
                    if args.agent.json {
                        text.push_str(&serde_json::to_string(e)?);
                    } else {
                        text.push_str(&e.line());
                    }
                    text.push('\n');
                }
                print(&text)?;
                since = view.last_seq.max(since);
                if !args.follow {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}

/// Writes to stdout. A reader that went away (`| head`) ends the command quietly, as `ps`
/// does: the process exits 0 without a message.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
