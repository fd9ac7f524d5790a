//! The sandbox tested as a client sees it: the real server on port 0, spoken to over HTTP.

mod batch;
mod faults;
mod limits;
mod oauth;
mod objects;
mod schema;
mod search;
mod support;
mod ui;
mod webhooks;
