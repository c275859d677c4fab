//! `comfaas-exec`: the executor binary. Flags and config in, service out.

use std::path::PathBuf;

use clap::Parser;
use comfaas_exec::{ExecConfig, ExecFlags, Executor};
use tokio_util::sync::CancellationToken;

/// Runs comfaas functions on this host.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: ExecFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config: ExecConfig = comfaas_platform::settings::load(
        &ExecConfig::default(),
        cli.config.as_deref(),
        &cli.flags,
    )?;
    config.validate()?;
    let executor = Executor::connect(config).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        comfaas_platform::signals::terminated().await;
        on_signal.cancel();
    });
    executor.run(shutdown).await
}
