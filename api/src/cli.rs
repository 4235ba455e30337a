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
        #[arg(long, conflicts_with = "executor")]
        admin: bool,
        /// Give the token the executor role: read workspaces, runs and configuration
        /// versions, and move runs (POST /runs/{id}/actions/transition); nothing else.
        #[arg(long)]
        executor: bool,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens, one per line: id (at-…), role, description, created, last used
    /// (tab-separated; never the token itself).
    List {
        /// Include revoked tokens (a sixth column says when they were revoked).
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by its id (at-…): it stops working at once on every API
    /// replica (within a few seconds).
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new Fernet key.
    Generate,
    /// Re-encrypt every stored credential under the first key of TERRAPOD_ENCRYPTION__KEY.
    Rotate,
}
