//! What both Terrapod VCS programs need: configuration, the database schema and
//! models, the credential key ring, prefixed ids, the parsed domain values and the one
//! function that records a VCS-triggered run.

pub mod archives;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod health;
pub mod ids;
pub mod lifecycle;
pub mod outbox;
pub mod queue;
pub mod runs;
pub mod telemetry;
pub mod tokens;
pub mod triggers;
pub mod vcs;

pub use config::Settings;
