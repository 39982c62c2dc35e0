//! drover's daemon: the engine in the background, reached through a control
//! API.
//!
//! - [`run`] runs a daemon in the foreground (the `drover daemon` command puts
//!   it in the background): one per data directory, guarded by a locked pid
//!   file; it recovers the store's unfinished processes when it starts.
//! - The API is HTTP/JSON on a Unix socket in the data directory (mode 0600),
//!   and optionally on a loopback TCP address that asks for a token (from
//!   `daemon.token`). It is described by an OpenAPI document
//!   (`GET /v1/openapi.json`), streams state changes as server-sent events
//!   (`GET /v1/events`) and serves a live web page (`GET /`).
//! - Processes stay on the engine's thread; the API's thread reaches them by
//!   messages.
//! - [`Client`] speaks the API, for the CLI and for tests.

pub mod api;
mod client;
mod paths;
mod server;

pub use client::{Client, ClientError, EventStream, SseEvent, Target};
pub use hyper::{Method, StatusCode};
pub use paths::{Paths, PrivateDirError, private_dir};
pub use server::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DaemonConfig, DaemonError, MAX_CONNECTIONS_LIMIT, OPENAPI,
    Retention, openapi_document, run,
};
