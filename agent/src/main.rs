use std::process::ExitCode;

use clap::error::ErrorKind;
use hostprobe::cli::Command;

fn main() -> ExitCode {
    let cli = match hostprobe::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
                }
                _ => {
                    // One line: what is wrong, and where to look.
                    let msg = e.render().to_string();
                    let first = msg.lines().next().unwrap_or("bad arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    eprintln!("hostprobe: {first} (see `hostprobe --help`)");
                    ExitCode::from(2)
                }
            };
        }
    };
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_target(false).init();

    match cli.command {
        Command::Check(args) => hostprobe::check::run(&args),
        Command::Offcpu(args) => hostprobe::stacks::run(&args),
        Command::Diagnose(args) => hostprobe::run::diagnose(&args),
        Command::Record(args) => hostprobe::baseline::record::run(&args),
        Command::Compare(args) => hostprobe::baseline::compare::run(&args),
        Command::Collector(args) => report(hostprobe::collector::run(&args)),
        Command::Query(args) => report(hostprobe::collector::query_cmd(&args)),
        Command::Run(args) => result(hostprobe::run::run(args)),
        Command::Top(args) => result(hostprobe::run::top(args)),
    }
}

/// `run`'s own exit code, or its error as one line and exit status 1.
fn result(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hostprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An error as one line on stderr, and exit status 1.
fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}
