use std::process::ExitCode;

use clap::Parser as _;
use netns_agent::cli::{Cli, Command};

fn main() -> ExitCode {
    // Two malloc arenas are plenty for a handful of threads, and keep freed memory from
    // being scattered over one arena per short-lived blocking thread.
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    // A bare level applies to the agent; aya's own debug output is only for RUST_LOG.
    let filters = if cli.log_level.contains('=') {
        cli.log_level.clone()
    } else {
        format!("warn,netns_agent={}", cli.log_level)
    };
    env_logger::Builder::new().parse_filters(&filters).parse_env("RUST_LOG").format_target(false).init();
    let result = match cli.command {
        Command::Run(args) => netns_agent::settings(&args.common, args.listen, args.events_file)
            .map_err(Into::into)
            .and_then(|settings| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?
                    .block_on(netns_agent::agent::run(settings))
            }),
        Command::Check(args) => netns_agent::settings(&args, None, None)
            .map_err(Into::into)
            .and_then(|settings| netns_agent::check::run(&settings))
            .map(|report| print!("{report}")),
        Command::BenchFloor(args) => netns_agent::settings(&args, None, None)
            .map_err(Into::into)
            .and_then(|settings| netns_agent::check::bench_floor(&settings)),
        other => netns_agent::on_call(other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netns-agent: {}", netns_agent::attach::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error is one line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return ExitCode::from(2);
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let values = rendered
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("[possible values:"))
        .map(|l| format!(" {l}"))
        .unwrap_or_default();
    eprintln!("netns-agent: {first}{values}; see 'netns-agent --help'");
    ExitCode::from(2)
}
