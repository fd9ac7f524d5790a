//! All integration tests in one binary (one link step). Each test gets its own database, Redis
//! prefix and server; run with `cargo test` (Postgres and Redis on the standard ports).

mod helpers;

mod alerts;
mod api_keys;
mod auth;
mod bad_input;
mod browser;
mod budget;
mod cli;
mod connection_detail;
mod connections;
mod csrf;
mod dashboard;
mod dlq;
mod faults;
mod health;
mod history;
mod hubspot;
mod isolation;
mod jobs;
mod journey;
mod leases;
mod mappings;
mod oauth;
mod openapi;
mod paging;
mod poison_sync;
mod profile;
mod readme;
mod records;
mod references;
mod rls;
mod roles;
mod rules_page;
mod sync;
mod time_zones;
