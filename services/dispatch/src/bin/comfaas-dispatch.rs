//! `comfaas-dispatch`: the dispatcher binary. Flags and config in, service out.

use std::path::PathBuf;

use clap::Parser;
use comfaas_dispatch::{DispatchConfig, DispatchFlags, Dispatcher};
use tokio_util::sync::CancellationToken;

/// Places comfaas invocations and events on live nodes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: DispatchFlags,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config: DispatchConfig = comfaas_platform::settings::load(
        &DispatchConfig::default(),
        cli.config.as_deref(),
        &cli.flags,
    )?;
    let dispatcher = Dispatcher::connect(config).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        comfaas_platform::signals::terminated().await;
        on_signal.cancel();
    });
    dispatcher.run(shutdown).await
}
