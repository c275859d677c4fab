//! `comfaas-exec`: the executor binary. Flags and config in, service out.

use std::path::PathBuf;

use clap::Parser;
use comfaas_exec::{ExecConfig, ExecFlags, Executor};

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
    comfaas_platform::signals::init_logging("info");
    let cli = Cli::parse();
    let config: ExecConfig = comfaas_platform::settings::load(
        &ExecConfig::default(),
        cli.config.as_deref(),
        &cli.flags,
    )?;
    // What this process creates on the site (streams, buckets, stores)
    // gets the site's replica count.
    comfaas_platform::resources::set_replicas(config.nats.replicas)?;
    config.validate()?;
    let executor = Executor::connect(config).await?;
    let shutdown = comfaas_platform::signals::shutdown_on_signal();
    executor.run(shutdown).await
}
