//! `terrapod-api`: the TFE-style JSON:API of Terrapod VCS.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod error;
pub mod health;
pub mod jsonapi;
pub mod metrics;
pub mod polls;
pub mod resources;
pub mod routes;
pub mod startup;
pub mod webhooks;
