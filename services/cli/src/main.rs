//! `comfaas`: the command-line interface. Parses flags and calls the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use comfaas::{
    auth, dashboard, decisions, deploy, dev, dlq, inspect, invoke, iot, logs, output, scaffold,
    secret,
};
use comfaas_platform::nats::{NatsFlags, NatsOptions};
use comfaas_platform::registry::Registry;

/// comfaas: functions on the IoT → edge → cloud continuum, over NATS.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the embedded default: nats-server, a dispatcher, an edge and a
    /// cloud executor, with every function under --functions deployed
    Dev(dev::DevOptions),
    /// Credentials of a secure site: NKeys per role and node, the server
    /// configuration include, TLS
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Validate, pack and deploy the function in DIR
    Deploy {
        /// Function folder holding comfaas.toml
        dir: PathBuf,
        /// Seconds to wait for executors to install it (0: do not wait)
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// The operator's nkey seed file (or .creds) to sign the deployment
        /// with (default: the `--nkey` seed, the operator's identity);
        /// executors that trust operator keys refuse unsigned ones
        #[arg(long, env = "COMFAAS_SIGNING_KEY", value_name = "FILE")]
        signing_key: Option<PathBuf>,
        /// Print the deployment and each node's install state as JSON
        #[arg(long)]
        json: bool,
        /// Replace a version already deployed with other content (nodes
        /// reinstall it), or re-announce the same content (nodes whose
        /// install failed try again)
        #[arg(long)]
        force: bool,
    },
    /// Set, remove or list the secrets functions read as files
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Invoke a function and print its output
    Invoke {
        /// Function name
        function: String,
        /// Input: TEXT, @FILE, or @- for stdin (in the message; one too
        /// large for the server's max payload goes through the object store)
        #[arg(long, short, conflicts_with = "input_file")]
        data: Option<String>,
        /// Large input: uploaded once to the object store (named by its
        /// SHA-256) and passed as Comfaas-Input-Object
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Write the output to this file (large outputs are fetched from
        /// the object store either way)
        #[arg(long)]
        output_file: Option<PathBuf>,
        /// Print the reply headers on stderr
        #[arg(long, short)]
        verbose: bool,
        /// Run time limit, e.g. 30s
        #[arg(long)]
        timeout: Option<String>,
        /// auto, edge, cloud or node:<id>
        #[arg(long)]
        placement: Option<String>,
        /// MPI processes: a count (4) or a range (4-16) fitted to the chosen node
        #[arg(long)]
        procs: Option<comfaas_schemas::Procs>,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Print the reply (status, node, headers, output) as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Go back to an earlier version of a function
    Rollback {
        /// Function name
        function: String,
        /// The version to go back to [default: the one before the current]
        #[arg(long)]
        to: Option<String>,
        /// Seconds to wait for executors to install it (0: do not wait)
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Print the deployment and each node's install state as JSON
        #[arg(long)]
        json: bool,
    },
    /// List deployed functions and their state on each node
    Ls {
        /// Print `{"functions": [...]}` as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a function
    Rm {
        /// Function name
        function: String,
    },
    /// Show the live node table
    Nodes {
        /// Print `{"nodes": [...]}` as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Create a function folder NAME (manifest, entry, minimal code) that
    /// deploys and answers as it is
    New {
        /// Function name: lowercase letters, digits, `-` and `_`
        name: String,
        /// Its runtime
        #[arg(long, value_parser = parse_runtime, value_name = "RUNTIME",
              help = "python, python-mpi, c, c-mpi, rust-mpi, java or exec")]
        runtime: comfaas_schemas::Runtime,
        /// The folder to create it in
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// A warm handler (`mode = "handler"`: python, c, java, exec)
        #[arg(long)]
        handler: bool,
    },
    /// Print a shell completion script: `source <(comfaas completions bash)`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Serve a live web page of the site: nodes, functions, placement
    /// decisions, events, invocations per second (read-only)
    Dashboard(dashboard::DashboardOptions),
    /// Show the dispatchers' latest placement decisions: candidates, each
    /// estimate's parts, the choice
    Decisions {
        /// Keep printing new decisions as they are made
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per decision and line
        #[arg(long)]
        json: bool,
    },
    /// Print what a function's runs wrote to stderr (`time node id | line`)
    Logs {
        /// Function name
        function: String,
        /// Keep printing new logs as runs write them
        #[arg(long, short)]
        follow: bool,
        /// Only this invocation's (its Comfaas-Invocation-Id)
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Only runs on this node
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Only logs this recent, e.g. 10m, 2h [default: all kept]
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
    /// The dead-letter queue: events that ended without a successful run
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// On a cloud site: keep a mirror of an edge site's events and results
    BackupEdge {
        /// The edge site's JetStream domain
        #[arg(long, default_value = "edge")]
        domain: String,
    },
    /// Simulate devices publishing sensor events and print the results
    IotSim {
        /// Function the events go to
        #[arg(long, default_value = "sensor-stats")]
        function: String,
        /// Simulated devices
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Events per device
        #[arg(long, default_value_t = 2)]
        events: usize,
        /// Seconds to wait for all results
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set a secret; its value is read from stdin (or --from-file), never
    /// from the command line
    Set {
        /// Secret name: letters, digits and `_`
        name: String,
        /// Read the value from this file instead of stdin
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Remove a secret
    Rm {
        /// Secret name
        name: String,
    },
    /// List the secrets' names (never their values)
    Ls,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (ID, function, code, tries, when, why)
    Ls {
        /// Only this function's
        function: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter: every header and the payload
    Show {
        /// Its ID (from `ls`)
        id: u64,
    },
    /// Publish dead letters again as events (all, a function's, or one
    /// ID), removing each once the events stream has it
    Replay {
        /// A function name or a dead letter's ID
        target: Option<String>,
    },
    /// Remove dead letters (all, or a function's)
    Purge {
        /// Only this function's
        function: Option<String>,
    },
}

/// A runtime as manifests name it.
fn parse_runtime(text: &str) -> Result<comfaas_schemas::Runtime, String> {
    comfaas_schemas::Runtime::ALL
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| {
            let all: Vec<&str> = comfaas_schemas::Runtime::ALL
                .iter()
                .map(|r| r.as_str())
                .collect();
            format!("`{text}` is not a runtime: use one of {}", all.join(", "))
        })
}

#[tokio::main]
async fn main() {
    comfaas_platform::signals::init_logging("warn");
    // `comfaas ls | head`: the reader left; what it read was all it wanted.
    output::exit_quietly_on_broken_pipe();
    if let Err(e) = run(Cli::parse()).await {
        if output::is_broken_pipe(&e) {
            return;
        }
        eprintln!("comfaas: {e:#}");
        std::process::exit(1);
    }
}

/// Bundles no kept revision uses are deleted once ten minutes old; a
/// failure here only costs disk, so it is reported, not fatal.
async fn collect_garbage(registry: &Registry) {
    if let Err(e) = registry.collect_garbage(Duration::from_secs(600)).await {
        eprintln!("comfaas: warning: unused bundles not collected: {e}");
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let nats: NatsOptions = comfaas_platform::settings::load(
        &NatsOptions::default(),
        cli.config.as_deref(),
        &cli.nats,
    )?;
    let subjects = nats.subjects();
    if let Command::Auth(command) = cli.command {
        return auth::run(command, &nats.prefix);
    }
    // Commands that need no server.
    match cli.command {
        Command::New {
            name,
            runtime,
            dir,
            handler,
        } => {
            let folder = scaffold::create(&dir, &name, runtime, handler)?;
            output::line(format!(
                "created {runtime} function {name} in {}: deploy it with `comfaas deploy {}`",
                folder.display(),
                folder.display()
            ))?;
            return Ok(());
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "comfaas", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            return Ok(());
        }
        command => cli = Cli { command, ..cli },
    }
    if let Command::Dev(options) = cli.command {
        dev::refuse_client_flags(&cli.nats, cli.config.as_deref())?;
        let shutdown = comfaas_platform::signals::shutdown_on_signal();
        // `--replicas` (or COMFAAS_REPLICAS) as given; else by topology.
        let replicas = cli.nats.replicas.map(usize::from);
        return dev::run(options, replicas, shutdown).await;
    }
    comfaas_platform::resources::set_replicas(nats.replicas)?;
    let client = nats.connect("comfaas cli").await?;
    // From a cloud site, not an empty registry of its own: the edge's.
    // `strict` (ls) refuses a site that has none at all too, rather than
    // make an empty one and list nothing.
    let (client_ref, nats_ref) = (&client, &nats);
    let registry = |strict: bool| async move {
        let (client, nats) = (client_ref, nats_ref);
        match comfaas::domains::registry_elsewhere(client, nats).await {
            Some(comfaas::domains::Misplaced::AtEdge(message)) => anyhow::bail!(message),
            Some(comfaas::domains::Misplaced::NotHere(message)) if strict => {
                anyhow::bail!(message)
            }
            _ => {}
        }
        Registry::open(&nats.jetstream(client.clone()))
            .await
            .with_context(|| match &nats.nkey_file {
                Some(key) => format!(
                    "open the registry (is JetStream enabled? does {} belong to the operator? \
                     only the operator's key may read and write it)",
                    key.display()
                ),
                None => "open the registry (is JetStream enabled?)".to_owned(),
            })
    };
    match cli.command {
        Command::Dev(_) | Command::Auth(_) | Command::New { .. } | Command::Completions { .. } => {
            unreachable!("handled above")
        }
        Command::Deploy {
            dir,
            wait,
            signing_key,
            json,
            force,
        } => {
            let mut registry = registry(false).await?;
            // The operator's identity on NATS is also its signing key.
            match signing_key.or_else(|| nats.nkey_file.clone()) {
                Some(path) => {
                    let signer = comfaas_platform::signing::Signer::from_file(&path)?;
                    registry = registry.signing_with(signer);
                }
                None => eprintln!(
                    "comfaas: warning: deploying unsigned (no --signing-key or --nkey): \
                     executors that trust operator keys will refuse it"
                ),
            }
            let same_version = if force {
                comfaas_platform::registry::SameVersion::Replace
            } else {
                comfaas_platform::registry::SameVersion::Refuse
            };
            let deployment = match deploy::deploy_dir_with(&registry, &dir, same_version).await? {
                comfaas_platform::registry::Deployed::Stored(d) => d,
                comfaas_platform::registry::Deployed::Unchanged(d) => {
                    if !json {
                        println!(
                            "unchanged: {} {} is already deployed with this content",
                            d.manifest.name, d.manifest.version
                        );
                    }
                    d
                }
            };
            deploy::wait_and_report(&client, &subjects, &deployment, wait, json).await?;
            collect_garbage(&registry).await;
        }
        Command::Invoke {
            function,
            data,
            input_file,
            output_file,
            verbose,
            timeout,
            placement,
            procs,
            wait,
            json,
        } => {
            let js = nats.jetstream(client.clone());
            let max_payload = client.server_info().max_payload;
            let mut input = invoke::input(
                &js,
                data.as_deref(),
                input_file.as_deref(),
                max_payload,
                verbose,
            )
            .await?;
            let mut options = invoke::InvokeOptions {
                timeout,
                placement,
                procs,
                input_object: input.object.clone(),
                wait: Duration::from_secs(wait),
            };
            let body = input.body.clone();
            let mut reply = invoke::invoke(&client, &subjects, &function, body, &options).await?;
            if invoke::input_refused(&reply)
                && invoke::send_again(&js, &mut input, max_payload).await?
            {
                options.input_object = input.object.clone();
                let body = input.body.clone();
                reply = invoke::invoke(&client, &subjects, &function, body, &options).await?;
            }
            let print = invoke::PrintOptions {
                verbose,
                output_file: output_file.as_deref(),
                json,
            };
            invoke::print_reply(&js, &reply, &print).await?;
        }
        Command::Rollback {
            function,
            to,
            wait,
            json,
        } => {
            let deployment = registry(false)
                .await?
                .rollback(&function, to.as_deref())
                .await?;
            if !json {
                println!("rolled back {function} to {}", deployment.manifest.version);
            }
            deploy::wait_and_report(&client, &subjects, &deployment, wait, json).await?;
        }
        Command::Ls { json } => {
            inspect::ls(&registry(true).await?, &client, &subjects, json).await?
        }
        Command::Rm { function } => {
            let registry = registry(false).await?;
            inspect::rm(&registry, &function).await?;
            collect_garbage(&registry).await;
        }
        Command::Nodes { json } => inspect::nodes(&client, &subjects, json).await?,
        Command::Dashboard(options) => {
            let source = dashboard::Source {
                client: client.clone(),
                jetstream: nats.jetstream(client.clone()),
                subjects: subjects.clone(),
            };
            let shutdown = comfaas_platform::signals::shutdown_on_signal();
            dashboard::serve(source, options.addr, shutdown).await?;
        }
        Command::Decisions { follow, json } => {
            let format = if json {
                decisions::Format::Json
            } else {
                decisions::Format::Table
            };
            decisions::run(&client, &subjects, follow, format).await?
        }
        Command::Logs {
            function,
            follow,
            id,
            node,
            since,
        } => {
            let options = logs::LogsOptions {
                filter: comfaas_platform::logs::LogFilter {
                    function,
                    node,
                    invocation_id: id,
                    since,
                },
                follow,
            };
            logs::run(&nats.jetstream(client.clone()), &subjects, options).await?;
        }
        Command::Dlq { command } => {
            let js = nats.jetstream(client.clone());
            let mut queue = comfaas_platform::dlq::Dlq::open(&js, &subjects).await?;
            match command {
                DlqCommand::Ls { function, limit } => {
                    dlq::ls(&mut queue, function.as_deref(), limit).await?
                }
                DlqCommand::Show { id } => dlq::show(&queue, id).await?,
                DlqCommand::Replay { target } => {
                    dlq::replay(&mut queue, &dlq::Target::parse(target.as_deref())).await?
                }
                DlqCommand::Purge { function } => dlq::purge(&queue, function.as_deref()).await?,
            }
        }
        Command::Secret { command } => {
            let js = nats.jetstream(client.clone());
            let store = comfaas_platform::secrets::SecretStore::open_or_create(&js).await?;
            match command {
                SecretCommand::Set { name, from_file } => {
                    // Checked before waiting on stdin for a value.
                    comfaas_schemas::names::validate_secret_name(&name)?;
                    let value = secret::read_value(from_file.as_deref())?;
                    secret::set(&store, &name, &value).await?;
                }
                SecretCommand::Rm { name } => secret::rm(&store, &name).await?,
                SecretCommand::Ls => secret::ls(&store).await?,
            }
        }
        Command::BackupEdge { domain } => {
            comfaas::domains::check_edge_domain(&client, &domain).await?;
            // The mirrors live on the site we are connected to.
            let js = async_nats::jetstream::new(client.clone());
            comfaas_platform::resources::backup_edge(&js, &domain).await?;
            println!(
                "this site now mirrors {} and {} of domain `{domain}`",
                comfaas_schemas::names::EVENTS_STREAM,
                comfaas_schemas::names::RESULTS_STREAM
            );
        }
        Command::IotSim {
            function,
            devices,
            events,
            wait,
        } => {
            let ok = iot::run(
                &client,
                &subjects,
                &function,
                devices,
                events,
                Duration::from_secs(wait),
            )
            .await?;
            if ok < devices * events {
                anyhow::bail!(
                    "{} of {} events failed",
                    devices * events - ok,
                    devices * events
                );
            }
        }
    }
    client.flush().await.ok();
    Ok(())
}
