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
            web_telemetry_path: run.and_then(|r| r.telemetry_path.clone()),
            web_disable_api: run.is_some_and(|r| r.web_disable_api),
        },
    )
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let settings = settings(&args.common, Some(&args))?;
            // SIGHUP reads the file again, with the same flags over it.
            let reload = move || self::settings(&args.common, Some(&args));
            crate::daemon::run(settings, Box::new(reload))?;
        }
        Command::Check(args) => {
            let settings = settings(&args, None)?;
            let (report, usable) = check::run(&settings)?;
            print(&report)?;
            if !usable {
                anyhow::bail!(
                    "no probe can attach here with --attach {}",
                    args.attach.map_or("auto".into(), |a| format!("{a:?}").to_lowercase())
                );
            }
        }
        Command::BenchFloor(args) => check::bench_floor(&settings(&args.common, None)?, &args.program)?,
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
            if args.agent.json() {
                return print(&format!("{}\n", serde_json::to_string_pretty(&second)?));
            }
            let mut rows = render::rows(&second, &first, (args.interval > 0.0).then_some(seconds));
            render::sort_rows(&mut rows, args.sort);
            print(&render::table(&rows, args.agent.wide()))?;
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
            if args.agent.json() {
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
            let netns = match &args.netns {
                Some(what) => Some(client::find(&c, what)?.netns),
                None => None,
            };
            let mut since = 0;
            loop {
                let view = c.events(&Filter { netns, cookie: None }, since, args.limit)?;
                let mut text = String::new();
                for e in &view.events {
                    if args.agent.json() {
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

/// One log line: one timestamp, the level, the message (quoted for logfmt, escaped in JSON),
/// always on one line whatever the message holds.
pub fn log_line(
    format: args::LogFormat,
    time: std::time::SystemTime,
    level: log::Level,
    msg: &str,
) -> String {
    let ts = humantime::format_rfc3339_millis(time).to_string();
    let level = level.as_str().to_ascii_lowercase();
    match format {
        args::LogFormat::Logfmt => {
            let quoted: String = msg
                .chars()
                .flat_map(|c| match c {
                    '"' => vec!['\\', '"'],
                    '\\' => vec!['\\', '\\'],
                    '\n' => vec!['\\', 'n'],
                    c => vec![c],
                })
                .collect();
            format!("ts={ts} level={level} msg=\"{quoted}\"")
        }
        args::LogFormat::Json => serde_json::json!({ "ts": ts, "level": level, "msg": msg }).to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_have_one_timestamp_and_stay_on_one_line() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let line = log_line(args::LogFormat::Logfmt, t, log::Level::Warn, "a \"b\"\nc\\");
        assert_eq!(line, r#"ts=1970-01-01T00:00:01.500Z level=warn msg="a \"b\"\nc\\""#);
        let json = log_line(args::LogFormat::Json, t, log::Level::Info, "x\ny");
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["msg"], "x\ny");
        assert_eq!(value["level"], "info");
    }
}
