//! The `flashsale` binary: `flashsale` (or `flashsale serve`) runs the service,
//! `flashsale migrate` migrates DATABASE_URL (DATABASE_SESSION_URL when set) and exits, `flashsale openapi` prints the
//! OpenAPI document, `flashsale token USER` a buyer token.

// The HTTP middleware stack (`api::app`) is one deeply nested type.
#![recursion_limit = "256"]

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use flashsale::app::{Application, shutdown_signal};
use flashsale::config::{Cli, Command};
use flashsale::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            // The document needs no database; a lazy pool never connects.
            let pool = sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://localhost/flashsale")
                .context("Failed to build a lazy pool")?;
            let spec = flashsale::api::openapi_json(Store::new(pool))
                .context("Failed to build the OpenAPI document")?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{spec}").context("Failed to write the document")
        }
        Command::Token {
            user_id,
            ttl_seconds,
        } => {
            let settings = flashsale::app::token_settings(&cli.config);
            let token = flashsale::api::buyer_auth::mint_token(&settings, &user_id, ttl_seconds)?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{token}").context("Failed to write the token")
        }
        Command::Migrate => {
            flashsale::telemetry::init(cli.config.log_format);
            let url = cli.config.migration_url().context(
                "DATABASE_URL is not set: `flashsale migrate` migrates a configured database \
                 (the embedded one is migrated by the service itself)",
            )?;
            flashsale::store::migrate(url)
                .await
                .context("Failed to run migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            flashsale::telemetry::init(cli.config.log_format);
            let app = Application::build(&cli.config).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}
