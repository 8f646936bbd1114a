//! The exposure check: on any address but loopback the service refuses to start with
//! development or weak secrets (see [`Config::check_exposure`]).

use std::net::IpAddr;

use super::{Config, MIN_SECRET_BYTES};

impl Config {
    /// Secure by default: on any address but loopback the service refuses to start with
    /// the development admin key, a short admin key or token secret, or no buyer identity
    /// (unless `ALLOW_UNVERIFIED_BUYERS=true`). Plain development on 127.0.0.1 needs none of
    /// it. The error says what to set.
    pub fn check_exposure(&self) -> Result<(), String> {
        if is_loopback(&self.host) {
            return Ok(());
        }
        let mut problems = Vec::new();
        let (admin_key, is_default) = self.admin_key();
        if is_default {
            problems.push(format!(
                "ADMIN_API_KEY is not set (the built-in development key is refused here): set \
                 it to a random key of at least {MIN_SECRET_BYTES} bytes, for example \
                 `openssl rand -hex 32`"
            ));
        } else if admin_key.len() < MIN_SECRET_BYTES {
            problems.push(format!(
                "ADMIN_API_KEY is {} bytes: use at least {MIN_SECRET_BYTES}",
                admin_key.len()
            ));
        }
        match self.buyer_token_secret() {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => problems.push(format!(
                "BUYER_TOKEN_SECRET is {} bytes: use at least {MIN_SECRET_BYTES}",
                secret.len()
            )),
            Some(_) => {}
            None if self.allow_unverified_buyers => {}
            None => problems.push(
                "BUYER_TOKEN_SECRET is not set, so anyone could buy in any user's name: set it \
                 (at least 32 bytes; see README \"Buyer identity\"), or set \
                 ALLOW_UNVERIFIED_BUYERS=true to run without buyer identity on purpose"
                    .to_string(),
            ),
        }
        if let Some(token) = self.lifecycle.metrics_token()
            && token.len() < MIN_SECRET_BYTES
        {
            problems.push(format!(
                "METRICS_TOKEN is {} bytes: use at least {MIN_SECRET_BYTES}",
                token.len()
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {} with an unsafe configuration:\n  - {}",
            self.host,
            problems.join("\n  - ")
        ))
    }
}

/// `localhost`, or an IP address in the loopback range.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["flashsale"];
        argv.extend(args);
        Cli::try_parse_from(argv).expect("parses").config
    }

    #[test]
    fn loopback_needs_no_configuration() {
        assert_eq!(config(&[]).check_exposure(), Ok(()));
        assert_eq!(config(&["--host", "::1"]).check_exposure(), Ok(()));
        assert_eq!(config(&["--host", "localhost"]).check_exposure(), Ok(()));
    }

    #[test]
    fn a_public_address_refuses_weak_or_missing_secrets() {
        let long = "k".repeat(MIN_SECRET_BYTES);
        let err = config(&["--host", "0.0.0.0"])
            .check_exposure()
            .expect_err("default key");
        assert!(err.contains("ADMIN_API_KEY is not set"), "{err}");
        assert!(err.contains("BUYER_TOKEN_SECRET is not set"), "{err}");
        let err = config(&["--host", "0.0.0.0", "--admin-api-key", "short"])
            .check_exposure()
            .expect_err("short key");
        assert!(err.contains("ADMIN_API_KEY is 5 bytes"), "{err}");
        let err = config(&[
            "--host",
            "0.0.0.0",
            "--admin-api-key",
            &long,
            "--buyer-token-secret",
            "s",
        ])
        .check_exposure()
        .expect_err("short secret");
        assert!(err.contains("BUYER_TOKEN_SECRET is 1 bytes"), "{err}");
        let err = config(&[
            "--host",
            "0.0.0.0",
            "--admin-api-key",
            &long,
            "--allow-unverified-buyers",
            "true",
            "--metrics-token",
            "CHANGE-ME",
        ])
        .check_exposure()
        .expect_err("short metrics token");
        assert!(err.contains("METRICS_TOKEN is 9 bytes"), "{err}");
        assert_eq!(
            config(&[
                "--host",
                "0.0.0.0",
                "--admin-api-key",
                &long,
                "--buyer-token-secret",
                &long
            ])
            .check_exposure(),
            Ok(())
        );
        assert_eq!(
            config(&[
                "--host",
                "10.0.0.1",
                "--admin-api-key",
                &long,
                "--allow-unverified-buyers",
                "true"
            ])
            .check_exposure(),
            Ok(())
        );
    }
}
