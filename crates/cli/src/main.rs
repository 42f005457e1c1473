//! `billsync`, the command: the agent of the [`billsync`] library for a shell, a service
//! manager or a container. It reads `billsync.toml`, prints for a person (or JSON with
//! `--json`), and serves `/metrics` and `/healthz` while it runs.
//!
//! ```text
//! billsync demo                                  # the whole story on the built-in emulator
//! billsync doctor                                # is each tenant's token billing-ready?
//! billsync enqueue --tenant acme events.jsonl    # store events durably, all or nothing
//! billsync sync                                  # deliver what can be delivered now
//! billsync run --listen 127.0.0.1:9464           # the long-running agent (and the ingest of [ingest])
//! billsync status                                # counts and state per tenant
//! billsync reconcile --days 7                     # does the platform hold exactly what was delivered?
//! billsync quarantine list                       # broker messages the MQTT ingest could not store
//! ```
//!
//! Exit codes: 0 success; 1 a fatal error; 2 invalid input (for example a bad line given to
//! `enqueue`, or `reconcile --since` before what the outbox can vouch for); 3 work remains for a
//! blocked or unreachable tenant (`sync`), a tenant is not billing-ready (`doctor`), or
//! discrepancies remain or a tenant's platform side cannot be read (`reconcile`); 75 try again
//! later (`enqueue` while the outbox pushes back).
//!
//! Built without the default `emulator` feature, the binary is the agent alone: no `demo`,
//! no `emulator`, and none of the emulator's dependencies.

mod commands;
#[cfg(feature = "emulator")]
mod demo;
mod ingest;
mod key;
mod mqtt;
mod output;
mod quarantine;
mod reconcile;
mod serve;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use billsync::Agent;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "billsync", version, about = "Gets billing events to the IoT platform, and says why when it says no.")]
struct Cli {
    /// The configuration file.
    #[arg(long, env = "BILLSYNC_CONFIG", default_value = "billsync.toml")]
    config: PathBuf,
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less logging (errors only).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the emulator in-process, enqueue sample events for the demo tenants, sync, and
    /// show what happened (including the thread's misconfigured tenant).
    #[cfg(feature = "emulator")]
    Demo,
    /// Store events from a JSON Lines file (or `-` for standard input), all or nothing.
    Enqueue {
        /// The tenant's name in the configuration.
        #[arg(long)]
        tenant: String,
        /// The file; `-` or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Deliver everything deliverable now, then return.
    Sync,
    /// The long-running agent, with /metrics and /healthz, and the HTTP ingest for devices
    /// when the configuration has an [ingest] section.
    Run {
        /// Where to serve /metrics and /healthz.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
    },
    /// Counts and state per tenant.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dead-lettered events.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Check each tenant's token end to end and say what to change.
    Doctor {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prove, tenant by tenant and UTC day by day, that the platform holds exactly what was
    /// delivered; with --repair, requeue what it lacks and settle what it already holds.
    Reconcile {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// The last N UTC days, today included (default 7).
        #[arg(long, conflicts_with = "since", value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
        /// From this UTC day (YYYY-MM-DD) to today.
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        /// Print JSON (every id of each kind, up to 100,000).
        #[arg(long)]
        json: bool,
        /// Requeue (and send) what the platform lacks, settle what it already holds; under the
        /// tenant's claim, never deleting anything.
        #[arg(long)]
        repair: bool,
        /// No one else posts for these tenants: the platform's events unknown here count.
        #[arg(long)]
        exclusive: bool,
    },
    /// Broker messages the MQTT ingest could not store (unreadable, unknown tenant, invalid
    /// event): list them, retry them after a fix, or remove them.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Private keys for tenants on `private_key_jwt`.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the platform emulator.
    #[cfg(feature = "emulator")]
    Emulator {
        /// The emulator's registry file (without it: the built-in demo registry).
        #[arg(long = "config")]
        registry: Option<PathBuf>,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Also write the per-run admin key (printed as `admin key: KEY`) to this file, readable
        /// by its owner only.
        #[arg(long, value_name = "PATH")]
        admin_key_file: Option<PathBuf>,
        /// Also answer admin requests whose Host is NAME (any port), beside localhost,
        /// 127.0.0.1 and [::1]: a container's or CI service's name. Repeatable.
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// List dead-lettered events.
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Return dead-lettered events to pending.
    Requeue(RequeueArgs),
}

#[derive(Subcommand, Debug)]
enum QuarantineCommand {
    /// List the quarantined messages: number, time, topic, size, reason and the payload's start.
    List {
        /// Print JSON (with each whole kept payload).
        #[arg(long)]
        json: bool,
    },
    /// Take the messages again by today's configuration; those stored are removed (exit 3 when
    /// one is still refused).
    Requeue(QuarantineArgs),
    /// Remove messages from the quarantine.
    Purge(QuarantineArgs),
}

#[derive(Args, Debug)]
struct QuarantineArgs {
    /// Every entry.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// These entries (their numbers in `quarantine list`).
    #[arg(required_unless_present = "all")]
    ids: Vec<i64>,
}

#[derive(Args, Debug)]
struct RequeueArgs {
    /// Only this tenant (required with event ids).
    #[arg(long)]
    tenant: Option<String>,
    /// Every dead-lettered event (of the tenant, or of all tenants).
    #[arg(long, conflicts_with = "event_ids")]
    all: bool,
    /// These events.
    #[arg(required_unless_present = "all")]
    event_ids: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Write a new private key for a tenant (mode 600, `keys/TENANT.pem` beside the
    /// configuration) and print its public key, its key id and the configuration lines. Never
    /// edits the configuration.
    Generate {
        /// The tenant's local name.
        #[arg(long)]
        tenant: String,
        /// The signing algorithm.
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rs256)]
        algorithm: KeyAlgorithm,
        /// Write the key here instead.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

/// `--algorithm`.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum KeyAlgorithm {
    /// RSA 2048, RS256: what every console accepts.
    Rs256,
    /// EC P-256, ES256: smaller and faster to sign.
    Es256,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Decode a JWT and say whether it is billing-ready. Never sends it anywhere.
    Inspect {
        /// The token; `-` or nothing for standard input.
        token: Option<String>,
        /// Check the tenant_id claim against this X-Tenant-ID.
        #[arg(long)]
        tenant_id: Option<String>,
        /// Check the client_id claim against this X-Application-ID.
        #[arg(long)]
        application_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // The demo tells its own story; its warnings would only repeat it.
    #[cfg(feature = "emulator")]
    let demo = matches!(cli.command, Command::Demo);
    #[cfg(not(feature = "emulator"))]
    let demo = false;
    let default = match cli.verbose {
        _ if cli.quiet => "error",
        0 if demo => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config;
    let agent = || async { Agent::from_file(&config).await };
    match cli.command {
        #[cfg(feature = "emulator")]
        Command::Demo => demo::run().await,
        #[cfg(feature = "emulator")]
        Command::Emulator { registry, listen, admin_key_file, allow_hosts } => {
            demo::serve_emulator(demo::EmulatorOptions { registry, listen, admin_key_file, allow_hosts }).await
        }
        Command::Token(TokenCommand::Inspect { token, tenant_id, application_id, json }) => {
            commands::inspect(token.as_deref(), tenant_id, application_id, json)
        }
        Command::Key(KeyCommand::Generate { tenant, algorithm, out, force }) => {
            let algorithm = match algorithm {
                KeyAlgorithm::Rs256 => billsync::AssertionAlgorithm::Rs256,
                KeyAlgorithm::Es256 => billsync::AssertionAlgorithm::Es256,
            };
            key::generate(&key::Generate { config: &config, tenant: &tenant, algorithm, out, force })
        }
        Command::Enqueue { tenant, file } => commands::enqueue(&agent().await?, &tenant, file.as_deref()).await,
        Command::Sync => commands::sync(&agent().await?, std::io::stderr().is_terminal() && !cli.quiet).await,
        Command::Run { listen } => serve::run(agent().await?, listen).await,
        Command::Status { json } => commands::status(&agent().await?, json).await,
        Command::DeadLetter(DeadLetterCommand::List { tenant, json }) => {
            commands::dead_letter_list(&agent().await?, tenant.as_deref(), json).await
        }
        Command::DeadLetter(DeadLetterCommand::Requeue(args)) => {
            commands::dead_letter_requeue(&agent().await?, args.tenant.as_deref(), args.all, &args.event_ids).await
        }
        Command::Quarantine(QuarantineCommand::List { json }) => quarantine::list(&agent().await?, json).await,
        Command::Quarantine(QuarantineCommand::Requeue(a)) => {
            quarantine::requeue(&agent().await?, &quarantine::selection(a.all, &a.ids)).await
        }
        Command::Quarantine(QuarantineCommand::Purge(a)) => {
            quarantine::purge(&agent().await?, &quarantine::selection(a.all, &a.ids)).await
        }
        Command::Doctor { tenant, json } => commands::doctor(&agent().await?, tenant.as_deref(), json).await,
        Command::Reconcile { tenant, days, since, json, repair, exclusive } => {
            let days = match (days, since) {
                (_, Some(d)) => billsync::reconcile::Days::Since(d),
                (Some(n), None) => billsync::reconcile::Days::Last(n),
                (None, None) => billsync::reconcile::Days::default(),
            };
            let opts = billsync::reconcile::ReconcileOptions { tenant, days, repair, exclusive, share: None };
            let progress = std::io::stderr().is_terminal() && !cli.quiet && !json;
            reconcile::reconcile(&agent().await?, &opts, json, progress).await
        }
    }
}
