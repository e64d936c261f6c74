use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = edgeimg::cli::Cli::parse();
    edgeimg::logging::init(cli.verbose, false);
    match edgeimg::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
