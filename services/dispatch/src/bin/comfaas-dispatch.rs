//! `comfaas-dispatch`: the dispatcher binary. Flags and config in, service out.

use std::path::PathBuf;

use clap::Parser;
use comfaas_dispatch::{DispatchConfig, DispatchFlags, Dispatcher};

/// Every invocation allocates a few short-lived buffers (its task, its
/// messages, its placement view); mimalloc's per-thread free lists serve
/// them at a fraction of glibc malloc's cost (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    comfaas_platform::signals::init_logging("info");
    let cli = Cli::parse();
    let config: DispatchConfig = comfaas_platform::settings::load(
        &DispatchConfig::default(),
        cli.config.as_deref(),
        &cli.flags,
    )?;
    // What this process creates on the site (streams, buckets, stores)
    // gets the site's replica count.
    comfaas_platform::resources::set_replicas(config.nats.replicas)?;
    let dispatcher = Dispatcher::connect(config).await?;
    let shutdown = comfaas_platform::signals::shutdown_on_signal();
    dispatcher.run(shutdown).await
}
