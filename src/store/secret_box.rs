//! Webhook secrets at rest: sealed with XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`, an authenticated cipher) under `WEBHOOK_SECRET_KEY`, so a database
//! backup alone cannot sign a delivery. Each sealed value is bound to its endpoint's id (the
//! associated data): a sealed secret copied to another endpoint does not open.
//!
//! Stored as `sealed:v1:<base64 of the 24-byte nonce and the ciphertext>`; a value without
//! that prefix is a plain secret (written before a key was set). The key can be rotated:
//! with the new key in `WEBHOOK_SECRET_KEY` and the old one in
//! `WEBHOOK_SECRET_KEY_PREVIOUS`, values open with either, and [`Store::reseal_webhook_secrets`]
//! (run at start-up) seals every value, plain ones included, under the new key.
//!
//! [`Store::reseal_webhook_secrets`]: super::Store::reseal_webhook_secrets

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

const PREFIX: &str = "sealed:v1:";
const NONCE_BYTES: usize = 24;

/// Why a stored secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the webhook secret is sealed and WEBHOOK_SECRET_KEY is not set")]
    NoKey,
    #[error("the webhook secret does not open with WEBHOOK_SECRET_KEY (or _PREVIOUS)")]
    WrongKey,
}

/// A bad `WEBHOOK_SECRET_KEY` value.
#[derive(Debug, thiserror::Error)]
#[error("{0} must be 64 hexadecimal characters (32 bytes), e.g. from `openssl rand -hex 32`")]
pub struct BadKey(pub &'static str);

/// The current key, and the previous one during a rotation.
pub struct SecretBox {
    current: XChaCha20Poly1305,
    previous: Option<XChaCha20Poly1305>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<keys redacted>)")
    }
}

fn cipher(hex_key: &str, name: &'static str) -> Result<XChaCha20Poly1305, BadKey> {
    let hex_key = hex_key.trim();
    if hex_key.len() != 64 || !hex_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadKey(name));
    }
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex_key[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| BadKey(name))?;
    XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| BadKey(name))
}

impl SecretBox {
    pub fn new(current: &str, previous: Option<&str>) -> Result<Self, BadKey> {
        Ok(Self {
            current: cipher(current, "WEBHOOK_SECRET_KEY")?,
            previous: previous
                .map(|key| cipher(key, "WEBHOOK_SECRET_KEY_PREVIOUS"))
                .transpose()?,
        })
    }

    /// Seals `secret` for the endpoint `id` under the current key.
    pub fn seal(&self, id: Uuid, secret: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: id.as_bytes(),
        };
        // Encryption fails only for messages past the cipher's limit (2^38 bytes).
        let sealed = self.current.encrypt(&nonce, payload).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        format!("{PREFIX}{}", STANDARD.encode(bytes))
    }

    /// Whether `stored` is sealed under the current key already.
    pub fn is_current(&self, id: Uuid, stored: &str) -> bool {
        open_with(&self.current, id, stored).is_some()
    }

    /// The plain secret of a stored value (plain, or sealed under either key).
    pub fn open(&self, id: Uuid, stored: &str) -> Result<String, SealError> {
        if !stored.starts_with(PREFIX) {
            return Ok(stored.to_string());
        }
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|cipher| open_with(cipher, id, stored))
            .ok_or(SealError::WrongKey)
    }
}

fn open_with(cipher: &XChaCha20Poly1305, id: Uuid, stored: &str) -> Option<String> {
    let bytes = STANDARD.decode(stored.strip_prefix(PREFIX)?).ok()?;
    if bytes.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
    let payload = Payload {
        msg: sealed,
        aad: id.as_bytes(),
    };
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
    let plain = cipher.decrypt(&XNonce::from(nonce), payload).ok()?;
    String::from_utf8(plain).ok()
}

/// A stored value as the sender needs it, with or without a box.
pub fn open(secrets: Option<&SecretBox>, id: Uuid, stored: &str) -> Result<String, SealError> {
    match secrets {
        Some(secrets) => secrets.open(id, stored),
        None if stored.starts_with(PREFIX) => Err(SealError::NoKey),
        None => Ok(stored.to_string()),
    }
}

/// A secret as it is stored: sealed when there is a box.
pub fn seal(secrets: Option<&SecretBox>, id: Uuid, secret: &str) -> String {
    match secrets {
        Some(secrets) => secrets.seal(id, secret),
        None => secret.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const OTHER: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_sealed_secret_opens_for_its_endpoint_only_and_hides_the_secret() {
        let secrets = SecretBox::new(KEY, None).expect("key");
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let stored = secrets.seal(id, "whsec_c2VjcmV0");
        assert!(stored.starts_with(PREFIX) && !stored.contains("whsec_"));
        assert_eq!(secrets.open(id, &stored).as_deref(), Ok("whsec_c2VjcmV0"));
        assert_eq!(secrets.open(other, &stored), Err(SealError::WrongKey));
        assert_ne!(
            stored,
            secrets.seal(id, "whsec_c2VjcmV0"),
            "a fresh nonce each time"
        );
        assert_eq!(open(None, id, &stored), Err(SealError::NoKey));
        assert_eq!(open(None, id, "whsec_plain").as_deref(), Ok("whsec_plain"));
    }

    #[test]
    fn a_rotation_opens_old_values_with_the_previous_key() {
        let id = Uuid::new_v4();
        let old = SecretBox::new(OTHER, None)
            .expect("old key")
            .seal(id, "whsec_x");
        let rotating = SecretBox::new(KEY, Some(OTHER)).expect("keys");
        assert!(!rotating.is_current(id, &old));
        assert_eq!(rotating.open(id, &old).as_deref(), Ok("whsec_x"));
        let new_only = SecretBox::new(KEY, None).expect("key");
        assert_eq!(new_only.open(id, &old), Err(SealError::WrongKey));
        assert!(new_only.is_current(id, &rotating.seal(id, "whsec_x")));
    }

    #[test]
    fn keys_must_be_32_bytes_of_hex() {
        assert!(SecretBox::new("abc", None).is_err());
        assert!(SecretBox::new(&"zz".repeat(32), None).is_err());
        assert!(SecretBox::new(KEY, Some("short")).is_err());
    }
}
