//! One integration binary for the poller: real PostgreSQL, real RabbitMQ (a vhost per
//! test) and the VCS simulator.

mod field;
mod flows;
mod helpers;
mod process;
mod replicas;
mod reporting;
mod robustness;
mod triggers;
mod troubleshooting;
