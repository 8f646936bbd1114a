//! Buyer identity: HS256 JWTs signed by the shop, when `BUYER_TOKEN_SECRET` is set.
//!
//! With a secret, every buyer route needs `Authorization: Bearer <JWT>` whose `sub` is the
//! user: a missing, malformed, wrongly signed, expired or otherwise invalid token is 401
//! `UNAUTHENTICATED`; a `userId` that differs from `sub` is 403 `FORBIDDEN`. Only HS256 is
//! accepted (`none`, RS256 and every other algorithm are refused). Without a secret
//! (development) the `userId` is taken at its word, and the service warns at start.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECONDS: u64 = 5;

/// `Authorization: Bearer <JWT>` on buyer routes.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", rename = "buyerToken")]
pub struct BuyerToken(Bearer);

/// The buyer's credentials: a bearer token, or none (accepted only without a secret).
#[derive(SecurityScheme)]
pub enum BuyerAuth {
    Token(BuyerToken),
    #[oai(fallback)]
    Anonymous,
}

/// The claims flashsale reads; the shop may add its own.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Why a buyer request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("the token's user is not the userId of the request")]
    Forbidden,
    /// No token identifies the buyer and the request names no user.
    #[error("userId is required")]
    MissingUser,
}

/// Verifies buyer tokens, or accepts every claimed user when no secret is configured.
pub struct BuyerTokens {
    verifier: Option<(DecodingKey, Validation)>,
}

/// How tokens are checked: the secret and, optionally, the audience and issuer they must name.
#[derive(Debug, Clone, Default)]
pub struct TokenSettings {
    pub secret: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl BuyerTokens {
    pub fn new(settings: &TokenSettings) -> Self {
        let verifier = settings
            .secret
            .as_deref()
            .filter(|secret| !secret.is_empty())
            .map(|secret| {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.algorithms = vec![Algorithm::HS256];
                validation.leeway = LEEWAY_SECONDS;
                // A token the shop issued for later is not valid yet.
                validation.validate_nbf = true;
                let mut required = vec!["exp", "sub"];
                required.extend(settings.audience.as_ref().map(|_| "aud"));
                required.extend(settings.issuer.as_ref().map(|_| "iss"));
                validation.set_required_spec_claims(&required);
                validation.validate_aud = settings.audience.is_some();
                if let Some(audience) = &settings.audience {
                    validation.set_audience(&[audience]);
                }
                if let Some(issuer) = &settings.issuer {
                    validation.set_issuer(&[issuer]);
                }
                (DecodingKey::from_secret(secret.as_bytes()), validation)
            });
        Self { verifier }
    }

    /// No verification: development mode.
    pub fn disabled() -> Self {
        Self { verifier: None }
    }

    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The verified user: `claimed` when tokens are off; else the token's `sub`, which
    /// must equal `claimed` when the request names a user.
    pub fn identify(
        &self,
        auth: &BuyerAuth,
        claimed: Option<&str>,
    ) -> Result<String, IdentityError> {
        let Some((key, validation)) = &self.verifier else {
            return claimed
                .map(str::to_string)
                .ok_or(IdentityError::MissingUser);
        };
        let BuyerAuth::Token(BuyerToken(bearer)) = auth else {
            return Err(IdentityError::Unauthenticated(
                "a buyer token is required: Authorization: Bearer <JWT>".into(),
            ));
        };
        // The decoder's own words stay in the log at debug level: a client learns only that
        // the token was refused, not which check a forged one failed.
        let claims = jsonwebtoken::decode::<Claims>(&bearer.token, key, validation)
            .map_err(|err| {
                tracing::debug!(error = %err, "buyer token refused");
                IdentityError::Unauthenticated(
                    "invalid buyer token: it must be an unexpired HS256 JWT signed by the shop"
                        .into(),
                )
            })?
            .claims;
        match claimed {
            Some(user) if user != claims.sub => Err(IdentityError::Forbidden),
            _ => Ok(claims.sub),
        }
    }
}

/// Responses that can refuse a buyer's identity: 400 without a user, 401, 403.
pub trait IdentityRefusal {
    fn refuse(err: IdentityError) -> Self;
}

/// Implements [`IdentityRefusal`] for a response enum with `BadRequest`, `Unauthorized` and
/// `Forbidden` variants.
macro_rules! identity_refusal {
    ($($response:ident),+ $(,)?) => {$(
        impl $crate::api::buyer_auth::IdentityRefusal for $response {
            fn refuse(err: $crate::api::buyer_auth::IdentityError) -> Self {
                use $crate::api::buyer_auth::IdentityError;
                use $crate::api::error::{ErrorBody, ErrorCode};
                match err {
                    IdentityError::MissingUser => {
                        $response::BadRequest(ErrorBody::json(ErrorCode::InvalidRequest, err.to_string()))
                    }
                    IdentityError::Unauthenticated(message) => {
                        $response::Unauthorized(ErrorBody::json(ErrorCode::Unauthenticated, message))
                    }
                    IdentityError::Forbidden => {
                        $response::Forbidden(ErrorBody::json(ErrorCode::Forbidden, err.to_string()))
                    }
                }
            }
        }
    )+};
}
pub(crate) use identity_refusal;

/// Signs a token for `user_id` valid for `ttl_seconds` (the `flashsale token` command, for
/// trying the API from Swagger UI; a shop signs its own the same way).
pub fn mint_token(
    settings: &TokenSettings,
    user_id: &str,
    ttl_seconds: u64,
) -> anyhow::Result<String> {
    let Some(secret) = settings.secret.as_deref().filter(|s| !s.is_empty()) else {
        anyhow::bail!("BUYER_TOKEN_SECRET is not set: there is nothing to sign with");
    };
    let claims = Claims {
        sub: user_id.to_string(),
        exp: jsonwebtoken::get_current_timestamp() + ttl_seconds,
        aud: settings.audience.clone(),
        iss: settings.issuer.clone(),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            secret: Some("shop-secret".into()),
            ..TokenSettings::default()
        }
    }

    fn auth(token: &str) -> BuyerAuth {
        BuyerAuth::Token(BuyerToken(Bearer {
            token: token.to_string(),
        }))
    }

    #[test]
    fn a_valid_token_names_its_user_and_no_other() {
        let tokens = BuyerTokens::new(&settings());
        let token = mint_token(&settings(), "alice", 60).expect("mint");
        assert_eq!(
            tokens.identify(&auth(&token), Some("alice")),
            Ok("alice".into())
        );
        assert_eq!(tokens.identify(&auth(&token), None), Ok("alice".into()));
        assert_eq!(
            tokens.identify(&auth(&token), Some("bob")),
            Err(IdentityError::Forbidden)
        );
    }

    #[test]
    fn without_a_secret_the_claimed_user_is_taken_and_a_token_is_not_needed() {
        let tokens = BuyerTokens::disabled();
        assert!(!tokens.enabled());
        assert_eq!(
            tokens.identify(&BuyerAuth::Anonymous, Some("bob")),
            Ok("bob".into())
        );
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_configured() {
        let strict = TokenSettings {
            audience: Some("flashsale".into()),
            issuer: Some("shop".into()),
            ..settings()
        };
        let tokens = BuyerTokens::new(&strict);
        let good = mint_token(&strict, "alice", 60).expect("mint");
        assert!(tokens.identify(&auth(&good), Some("alice")).is_ok());
        let other_audience = mint_token(
            &TokenSettings {
                audience: Some("elsewhere".into()),
                ..strict.clone()
            },
            "alice",
            60,
        )
        .expect("mint");
        assert!(matches!(
            tokens.identify(&auth(&other_audience), Some("alice")),
            Err(IdentityError::Unauthenticated(_))
        ));
        let no_claims = mint_token(&settings(), "alice", 60).expect("mint");
        assert!(tokens.identify(&auth(&no_claims), Some("alice")).is_err());
    }
}
