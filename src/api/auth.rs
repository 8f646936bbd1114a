//! The admin key check: a bearer key compared in constant time.

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use subtle::ConstantTimeEq;

/// The configured admin key, shared with the checker through the route's data.
#[derive(Clone)]
pub struct AdminKey(String);

impl AdminKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    /// Constant-time comparison: the time taken does not depend on how many leading bytes
    /// match. (Only a length mismatch returns early, which reveals the key's length at most.)
    pub fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// `Authorization: Bearer <ADMIN_API_KEY>` on every admin route.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "adminKey", checker = "check_admin_key")]
pub struct AdminAuth(());

async fn check_admin_key(req: &Request, bearer: Bearer) -> Option<()> {
    let key = req.data::<AdminKey>()?;
    key.matches(&bearer.token).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_matches() {
        let key = AdminKey::new("s3cret-key".into());
        assert!(key.matches("s3cret-key"));
        assert!(!key.matches("s3cret-kez"));
        assert!(!key.matches("s3cret-ke"));
        assert!(!key.matches(""));
        assert_eq!(format!("{key:?}"), "AdminKey(<redacted>)");
    }
}
