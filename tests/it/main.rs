//! Integration tests: the whole service against a real PostgreSQL.
//!
//! One test binary so every test shares one throwaway cluster (started on first use when
//! `DATABASE_URL` is unset); each test gets a fresh, migrated database of its own.

// The HTTP middleware stack (`api::app`) is one deeply nested type.
#![recursion_limit = "256"]

mod admin;
mod allowlist;
mod allowlist_races;
mod archive;
mod bad_input;
mod deploy;
mod failover;
mod group_commit;
mod hardening;
mod identity;
mod jobs;
mod openapi;
mod order_keys;
mod outage;
mod outbox;
mod outcome;
mod pooler;
mod purchase;
mod quantities;
mod quantity_holds;
mod quantity_input;
mod queue;
mod queue_door;
mod races;
mod raffle;
mod raffle_rules;
mod raffle_stream;
mod raffle_variants;
mod rate_limits;
mod receiver;
mod retention;
mod route;
mod sale_state;
mod streams;
mod support;
mod variant_holds;
mod variant_races;
mod variants;
mod webhooks;
