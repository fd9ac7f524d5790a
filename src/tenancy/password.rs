//! Password hashing with Argon2id (the crate's defaults follow OWASP's recommendation).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

pub const MIN_LENGTH: usize = 10;
pub const MAX_LENGTH: usize = 256;

/// Why a new password is not acceptable, as shown to the user.
pub fn check_strength(password: &str, email: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Some(format!("Use at least {MIN_LENGTH} characters."));
    }
    if chars > MAX_LENGTH {
        return Some(format!("Use at most {MAX_LENGTH} characters."));
    }
    if !email.is_empty() && password.eq_ignore_ascii_case(email) {
        return Some("Do not use your email address as your password.".to_string());
    }
    None
}

/// Hashes on the blocking pool: Argon2 takes tens of milliseconds by design.
pub async fn hash(password: SecretString) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::PasswordHash(e.to_string()))
    })
    .await?
}

/// Verifies on the blocking pool. With no stored hash (unknown account) it still does the same
/// work against a fixed hash, so response time does not reveal which emails exist.
pub async fn verify(password: SecretString, stored: Option<String>) -> Result<bool, Error> {
    tokio::task::spawn_blocking(move || {
        let stored_text = match stored.as_deref() {
            Some(text) => text,
            None => dummy_hash()?,
        };
        let parsed =
            PasswordHash::new(stored_text).map_err(|e| Error::PasswordHash(e.to_string()))?;
        let ok = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        Ok(ok && stored.is_some())
    })
    .await?
}

/// Argon2id hash (default parameters) of a random string nobody knows, made once per process.
fn dummy_hash() -> Result<&'static str, Error> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let secret: [u8; 32] = rand::random();
    let hash = Argon2::default()
        .hash_password(&secret)
        .map_err(|e| Error::PasswordHash(e.to_string()))?
        .to_string();
    Ok(DUMMY.get_or_init(|| hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_fail() {
        let stored = hash(SecretString::from("correct horse battery"))
            .await
            .expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify(
                SecretString::from("correct horse battery"),
                Some(stored.clone())
            )
            .await
            .expect("verify")
        );
        assert!(
            !verify(SecretString::from("wrong horse battery"), Some(stored))
                .await
                .expect("verify")
        );
        assert!(
            !verify(SecretString::from("anything"), None)
                .await
                .expect("dummy")
        );
    }

    #[test]
    fn strength() {
        assert!(check_strength("short", "a@b.co").is_some());
        assert!(check_strength("jane@example.com", "jane@example.com").is_some());
        assert!(check_strength("a long enough passphrase", "jane@example.com").is_none());
    }
}
