//! The `ferry` command line. All behaviour lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry::config::{Config, KeySource};
use ferry::{Parts, StartError};
use secrecy::SecretString;

/// Ferry's many small, short-lived allocations (records' fields as strings and maps) cost much
/// less with mimalloc than with glibc's allocator (BENCHMARKS.md, session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Multi-tenant CRM sync with an admin UI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP: admin UI, REST API, webhooks, /metrics and health checks.
    Serve {
        /// Do not apply pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Background workers: syncs, pushes, token refresh, schedules, maintenance.
    Work {
        #[arg(long)]
        no_migrate: bool,
    },
    /// Server and workers in one process (the default for one machine and for the demo).
    All {
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create (or reuse) the demo tenant and its owner; print the login and a fresh API key.
    Demo,
    /// Re-encrypt stored tokens under FERRY_SECRET_KEY (old keys in FERRY_PREVIOUS_SECRET_KEYS).
    RotateKey,
    /// Manage tenants from scripts.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// The HubSpot-compatible sandbox CRM on its own port (in memory; see docs/sandbox.md).
    Sandbox {
        #[command(flatten)]
        args: ferry::sandbox::SandboxArgs,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant with its owner and print a new API key as FERRY_API_KEY=<key>.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        /// The owner's password (at least 10 characters).
        #[arg(long, env = "FERRY_OWNER_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

const DEMO_EMAIL: &str = "demo@ferry.local";
const DEMO_PASSWORD: &str = "ferry-demo-password";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest and sqlx use rustls; pick its crypto provider once, before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ferry: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

fn load_config() -> Result<Config, ExitCode> {
    match Config::from_env() {
        Ok(config) => {
            if let KeySource::Generated(path) = &config.key_source {
                eprintln!(
                    "ferry: generated a development FERRY_SECRET_KEY and saved it to {} \
                     (production must set FERRY_SECRET_KEY)",
                    path.display()
                );
            }
            ferry::telemetry::init_tracing(config.log_format, &config.log_filter);
            Ok(config)
        }
        Err(err) => {
            eprintln!("ferry: {err}");
            Err(ExitCode::from(2))
        }
    }
}

fn report(result: Result<(), StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let parts = |http, workers, no_migrate: bool| Parts {
        http,
        workers,
        migrate: !no_migrate,
    };
    match cli.command {
        Command::Sandbox { args } => match ferry::sandbox::run_from_env(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err @ ferry::sandbox::SandboxError::Config(_)) => {
                eprintln!("ferry: {err}");
                ExitCode::from(2)
            }
            Err(err) => {
                eprintln!("ferry: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { no_migrate } => serve(parts(true, false, no_migrate)).await,
        Command::Work { no_migrate } => serve(parts(false, true, no_migrate)).await,
        Command::All { no_migrate } => serve(parts(true, true, no_migrate)).await,
        Command::Migrate => {
            let _ = dotenvy::dotenv();
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| ferry::config::DEFAULT_DATABASE_URL.to_string());
            report(ferry::migrate(&SecretString::from(url)).await)
        }
        Command::RotateKey => {
            let config = match load_config() {
                Ok(config) => config,
                Err(code) => return code,
            };
            match ferry::rotate_key(&config).await {
                Ok(done) => {
                    println!(
                        "Re-encrypted {} connection(s); {} already used the current key; {} changed meanwhile (already current).",
                        done.resealed, done.already_current, done.skipped
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => report(Err(err)),
            }
        }
        Command::Demo => {
            let config = match load_config() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let password =
                std::env::var("FERRY_DEMO_PASSWORD").unwrap_or_else(|_| DEMO_PASSWORD.to_string());
            let outcome = ferry::provision_tenant(
                &config,
                "Ferry Demo",
                DEMO_EMAIL,
                SecretString::from(password.clone()),
                "demo",
                true,
            )
            .await;
            match outcome {
                Ok(done) => {
                    let verb = if done.created { "created" } else { "reused" };
                    println!("Demo tenant {verb} ({}).", done.tenant_id);
                    println!("  Log in at {}login", config.public_url);
                    println!("  Email:    {DEMO_EMAIL}");
                    println!("  Password: {password}");
                    println!("{}", ferry::api_key_line(&done.api_key));
                    ExitCode::SUCCESS
                }
                Err(err) => report(Err(err)),
            }
        }
        Command::Tenant {
            command:
                TenantCommand::Create {
                    name,
                    email,
                    password,
                },
        } => {
            let config = match load_config() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let outcome = ferry::provision_tenant(
                &config,
                &name,
                &email,
                SecretString::from(password),
                "initial key",
                false,
            )
            .await;
            match outcome {
                Ok(done) => {
                    println!("Tenant created ({}); owner {email}.", done.tenant_id);
                    println!("{}", ferry::api_key_line(&done.api_key));
                    ExitCode::SUCCESS
                }
                Err(StartError::App(ferry::error::Error::Validation(errors))) => {
                    for e in errors {
                        // Sign-up's field names, as the flags of this command call them.
                        let flag = match e.field.as_str() {
                            "tenant_name" => "name",
                            other => other,
                        };
                        eprintln!("ferry: --{flag}: {}", e.message);
                    }
                    ExitCode::from(2)
                }
                Err(err) => report(Err(err)),
            }
        }
    }
}

async fn serve(parts: Parts) -> ExitCode {
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    report(ferry::run(config, parts).await)
}
