//! flashsale: a flash-sale backend whose only infrastructure is PostgreSQL.
//!
//! A tour of the modules, from the outside in:
//! - [`app`] builds and runs the service: configuration, database (embedded or given),
//!   migrations, the HTTP server and the job runner, and graceful shutdown.
//! - [`api`] is the HTTP surface (poem + poem-openapi): routes, JSON shapes, errors, rate
//!   limits, the admin key check, the OpenAPI document and Swagger UI.
//! - [`store`] holds every SQL statement; the ones that guard an invariant say why they are
//!   race-free under READ COMMITTED.
//! - [`worker`] runs background jobs taken from the `jobs` table with SKIP LOCKED.
//! - [`live`] fans sale changes out to the live streams (routes subscribe, its listener
//!   hears `NOTIFY`); [`status`] holds what background work reports and `/health` reads.
//! - [`domain`] holds plain types and rules: a sale's derived state, validation.
//! - [`embedded_pg`] starts a private Postgres from the installed binaries when no
//!   `DATABASE_URL` is given (and for the tests).
//! - [`config`] and [`telemetry`] read the environment and set up logging; [`metrics`]
//!   counts requests, purchases, queue actions and jobs for `GET /metrics`.

pub mod api;
pub mod app;
pub mod config;
pub mod domain;
pub mod embedded_pg;
pub mod live;
pub mod metrics;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
