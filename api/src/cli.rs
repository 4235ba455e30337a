use clap::{Parser, Subcommand};

/// Terrapod VCS API: JSON:API for VCS connections, workspaces, runs and configuration
/// versions. Configured through TERRAPOD_* environment variables.
#[derive(Parser, Debug)]
#[command(name = "terrapod-api", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the database if missing, apply pending migrations, and exit.
    Migrate,
    /// Serve the API (the default).
    Serve,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the Fernet keys that encrypt VCS credentials.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token and print it alone on stdout.
    Create {
        /// Give the token the admin role (otherwise member).
        #[arg(long)]
        admin: bool,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new Fernet key.
    Generate,
    /// Re-encrypt every stored credential under the first key of TERRAPOD_ENCRYPTION__KEY.
    Rotate,
}
