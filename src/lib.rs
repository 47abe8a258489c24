//! flexgate: a sidecar authorization proxy that reproduces the FlexMeasures security
//! model in front of any HTTP service.
//!
//! # Layout
//!
//! * [`settings`]: deployment settings and secrets from the environment.
//! * [`store`]: the database (PostgreSQL or SQLite): identity tables, change feed,
//!   migrations.
//! * [`auth`]: passwords (bcrypt, off the async runtime).
//! * [`cache`]: per-thread front caches in front of the shared (moka) caches.
//! * [`rules`]: the route-rule file: raw TOML, compiler with diagnostics, matcher, id extraction.
//! * [`policy`]: the pure decision engine (ACLs, roles, the FlexMeasures order of checks).
//! * [`cli`]: the `flexgate` command line; `main.rs` only parses and runs it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cache;
pub mod cli;
pub mod demo;
pub mod metrics;
pub mod policy;
#[doc(hidden)]
pub mod properties;
pub mod proxy;
pub mod rules;
pub mod settings;
pub mod store;
