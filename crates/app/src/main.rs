//! The `billsync` command line. Exit codes: 0 success; 1 a fatal error; 2 invalid input (for
//! example a bad line given to `enqueue`); 3 work remains for a blocked or unreachable tenant
//! (`sync`), or a tenant is not billing-ready (`doctor`).

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use billsync::Agent;
use billsync::cli;
use billsync_domain::EventRules;
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
    /// The long-running agent, with /metrics and /healthz.
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
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run the platform emulator.
    Emulator {
        /// The emulator's registry file (without it: the built-in demo registry).
        #[arg(long = "config")]
        registry: Option<PathBuf>,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
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
    let demo = matches!(cli.command, Command::Demo);
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
    match cli.command {
        Command::Demo => cli::demo::run().await,
        Command::Emulator { registry, listen } => {
            let config = match registry {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    billsync_emulator::EmulatorConfig::from_toml_str(&text)
                        .with_context(|| format!("{}", path.display()))?
                }
                None => billsync_emulator::EmulatorConfig::builtin(),
            };
            cli::serve_emulator(config, listen).await
        }
        Command::Token(TokenCommand::Inspect { token, tenant_id, application_id, json }) => {
            let token = match token.as_deref() {
                None | Some("-") => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).context("cannot read the token from standard input")?;
                    s
                }
                Some(t) => t.to_owned(),
            };
            cli::inspect(token.trim(), tenant_id, application_id, json)
        }
        Command::Enqueue { tenant, file } => {
            let agent = Agent::from_file(&cli.config).await?;
            let name = agent.tenant_name(&tenant)?;
            let now = chrono::Utc::now();
            let read = match file.as_deref() {
                None => billsync::jsonl::read_events(std::io::stdin().lock(), &EventRules::default(), now),
                Some(p) if p.as_os_str() == "-" => {
                    billsync::jsonl::read_events(std::io::stdin().lock(), &EventRules::default(), now)
                }
                Some(p) => {
                    let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
                    billsync::jsonl::read_events(std::io::BufReader::new(f), &EventRules::default(), now)
                }
            };
            let events = match read {
                Ok(events) => events,
                Err(billsync::jsonl::ReadError::Invalid(lines)) => {
                    for l in &lines {
                        eprintln!("{l}");
                    }
                    eprintln!("{} invalid line(s); nothing was stored", lines.len());
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            };
            let report = agent.enqueue(name.as_str(), &events).await?;
            println!(
                "{}: {} stored, {} duplicate(s) already in the outbox",
                name,
                report.stored,
                report.duplicates.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::sync(&agent, std::io::stderr().is_terminal() && !cli.quiet).await
        }
        Command::Run { listen } => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::run(agent, listen).await
        }
        Command::Status { json } => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::status(&agent, json).await
        }
        Command::DeadLetter(DeadLetterCommand::List { tenant, json }) => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::dead_letter_list(&agent, tenant.as_deref(), json).await
        }
        Command::DeadLetter(DeadLetterCommand::Requeue(args)) => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::dead_letter_requeue(&agent, args.tenant.as_deref(), args.all, &args.event_ids).await
        }
        Command::Doctor { tenant, json } => {
            let agent = Agent::from_file(&cli.config).await?;
            cli::doctor(&agent, tenant.as_deref(), json).await
        }
    }
}
