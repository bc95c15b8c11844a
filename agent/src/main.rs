//! The `netns-agent` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser as _;
use netns_agent::{cli::args::Cli, errors::error_chain, kernel::host};

fn main() -> ExitCode {
    host::limit_arenas();
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
    let format = cli.log_format;
    env_logger::Builder::new()
        .parse_filters(&filters)
        .parse_env("RUST_LOG")
        .format(move |out, record| {
            use std::io::Write as _;
            let line = netns_agent::cli::log_line(
                format,
                std::time::SystemTime::now(),
                record.level(),
                &record.args().to_string(),
            );
            writeln!(out, "{line}")
        })
        .init();
    match netns_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netns-agent: {}", error_chain(err.as_ref()));
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
