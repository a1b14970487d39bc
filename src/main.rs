use std::process::ExitCode;

use panopticon::config::{Cli, Command};
use panopticon::signal::shutdown_signal;
use panopticon::startup::{Application, StartupError};

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::load() {
        Err(e) => Err(StartupError::Config(e)),
        Ok(cli) => match cli.command {
            None | Some(Command::Run) => run(cli.settings).await,
            Some(Command::Demo(args)) => panopticon::demo::run(cli.settings, args).await,
            Some(Command::Simulate(args)) => simulate(*args).await,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StartupError::Config(_)) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(args: panopticon::config::SimulateArgs) -> Result<(), StartupError> {
    args.kafka_security.check().map_err(StartupError::Config)?;
    panopticon::simulate::run(args)
        .await
        .map_err(|e| StartupError::Runtime(e.to_string()))
}

async fn run(settings: panopticon::config::Settings) -> Result<(), StartupError> {
    Application::build(settings)?
        .run_until_stopped(shutdown_signal())
        .await
}
