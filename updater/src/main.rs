use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = edgeimg_updater::cli::Cli::parse();
    edgeimg_updater::logging::init(cli.verbose);
    match edgeimg_updater::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeimg-updater: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
