use std::process::ExitCode;

use clap::Parser;
use secrecy::ExposeSecret;
use terrapod_api::cli::{Cli, Command, KeysCommand, TokenCommand};
use terrapod_api::commands;
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::domain::Role;
use terrapod_shared::tokens::Revocation;
use terrapod_shared::{telemetry, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `keys generate` needs no configuration: it is how a first key is made.
    if let Some(Command::Keys {
        command: KeysCommand::Generate,
    }) = cli.command
    {
        println!("{}", KeyRing::generate_key());
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("terrapod-api: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format, &settings.log_filter);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => commands::migrate(&settings).await.map(|applied| {
            tracing::info!(applied, "migrations applied");
        }),
        Command::Token {
            command:
                TokenCommand::Create {
                    admin,
                    executor,
                    description,
                },
        } => commands::create_token(&settings, role_of(admin, executor), &description)
            .await
            .map(|token| {
                println!("{}", token.expose_secret());
            }),
        Command::Token {
            command: TokenCommand::List { all },
        } => commands::list_tokens(&settings, all).await.map(|lines| {
            for line in lines {
                println!("{line}");
            }
        }),
        Command::Token {
            command: TokenCommand::Revoke { id },
        } => match commands::revoke_token(&settings, &id).await {
            Ok(Revocation::Revoked) => {
                println!("revoked {id}");
                Ok(())
            }
            Ok(Revocation::AlreadyRevoked) => {
                println!("{id} was already revoked");
                Ok(())
            }
            Ok(Revocation::Unknown) => {
                eprintln!("terrapod-api: no token {id} (see `terrapod-api token list`)");
                return ExitCode::FAILURE;
            }
            Err(err) => Err(err),
        },
        Command::Keys {
            command: KeysCommand::Rotate,
        } => commands::rotate_keys(&settings).await.map(|count| {
            tracing::info!(
                credentials = count,
                "credentials re-encrypted under the first key"
            );
        }),
        Command::Keys {
            command: KeysCommand::Generate,
        } => unreachable!("handled before configuration"),
        Command::Serve => serve(settings).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "terrapod-api failed");
            eprintln!("terrapod-api: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: terrapod_shared::Settings) -> Result<(), commands::CommandError> {
    let listen = settings.api_listen;
    let app = commands::build_server(settings).await?;
    tracing::info!(%listen, port = app.port(), "terrapod-api listening");
    Ok(app.run_until_stopped().await?)
}

fn role_of(admin: bool, executor: bool) -> Role {
    match (admin, executor) {
        (true, _) => Role::Admin,
        (_, true) => Role::Executor,
        _ => Role::Member,
    }
}
