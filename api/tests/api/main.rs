//! One integration binary for the API: every test spawns the real application against
//! its own fresh database on the real PostgreSQL.

mod auth;
mod commands;
mod garbage;
mod go_tfe;
mod health;
mod helpers;
mod lifecycle;
mod polls;
mod run_creation;
mod runs;
mod schema;
mod security;
mod tfe;
mod vcs_connections;
mod vcs_events;
mod webhooks;
mod workspaces;
