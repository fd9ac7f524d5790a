//! The token vault: OAuth tokens encrypted at rest with AES-256-GCM under `FERRY_SECRET_KEY`.
//!
//! A sealed value is `0x01 ‖ key id (4 bytes) ‖ nonce (12) ‖ ciphertext+tag`. The key id is the
//! first four bytes of SHA-256 over the key, so values sealed under an old key can still be opened
//! while `ferry rotate-key` re-seals them under the new one. The associated data binds each
//! ciphertext to its connection and column: a value copied into another row or column will not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::SecretKey;

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed under an unknown key (id {0:08x}); set FERRY_PREVIOUS_SECRET_KEYS")]
    UnknownKey(u32),
    #[error("sealed value failed authentication")]
    Tampered,
    #[error("encryption failed")]
    Encrypt,
}

struct VaultKey {
    id: u32,
    cipher: Aes256Gcm,
}

impl VaultKey {
    fn new(key: &SecretKey) -> VaultKey {
        let digest = Sha256::digest(key.expose());
        let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.expose()));
        VaultKey { id, cipher }
    }
}

/// Seals and opens secrets. Holds the current key and any previous ones (for rotation).
pub struct Vault {
    current: VaultKey,
    previous: Vec<VaultKey>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &format_args!("{:08x}", self.current.id))
            .field("previous", &self.previous.len())
            .finish()
    }
}

/// Which secret of a connection a value is (part of the associated data).
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    AccessToken,
    RefreshToken,
}

impl Slot {
    fn label(self) -> &'static str {
        match self {
            Slot::AccessToken => "access_token",
            Slot::RefreshToken => "refresh_token",
        }
    }
}

fn aad(connection: Uuid, slot: Slot) -> Vec<u8> {
    format!("ferry:connection:{connection}:{}", slot.label()).into_bytes()
}

impl Vault {
    pub fn new(current: &SecretKey, previous: &[SecretKey]) -> Vault {
        Vault {
            current: VaultKey::new(current),
            previous: previous.iter().map(VaultKey::new).collect(),
        }
    }

    /// The id of the key new values are sealed with.
    pub fn key_id(&self) -> u32 {
        self.current.id
    }

    pub fn seal(
        &self,
        connection: Uuid,
        slot: Slot,
        secret: &SecretString,
    ) -> Result<Vec<u8>, VaultError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = aes_gcm::Nonce::from(nonce_bytes);
        let aad = aad(connection, slot);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Encrypt)?;
        let mut out = Vec::with_capacity(HEADER + ciphertext.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.current.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// The id of the key a sealed value was made with.
    pub fn sealed_key_id(sealed: &[u8]) -> Result<u32, VaultError> {
        if sealed.len() <= HEADER || sealed[0] != FORMAT {
            return Err(VaultError::Malformed);
        }
        Ok(u32::from_be_bytes([
            sealed[1], sealed[2], sealed[3], sealed[4],
        ]))
    }

    pub fn open(
        &self,
        connection: Uuid,
        slot: Slot,
        sealed: &[u8],
    ) -> Result<SecretString, VaultError> {
        let key_id = Self::sealed_key_id(sealed)?;
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == key_id)
            .ok_or(VaultError::UnknownKey(key_id))?;
        let mut nonce_bytes = [0u8; 12];
        nonce_bytes.copy_from_slice(&sealed[5..HEADER]);
        let nonce = aes_gcm::Nonce::from(nonce_bytes);
        let aad = aad(connection, slot);
        let plain = key
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER..],
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Tampered)?;
        let text = String::from_utf8(plain).map_err(|_| VaultError::Malformed)?;
        Ok(SecretString::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes([byte; 32])
    }

    #[test]
    fn seals_and_opens_and_never_stores_plaintext() {
        let vault = Vault::new(&key(1), &[]);
        let id = Uuid::new_v4();
        let secret = SecretString::from("CJ-super-secret-access-token");
        let sealed = vault.seal(id, Slot::AccessToken, &secret).expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"super"));
        let opened = vault.open(id, Slot::AccessToken, &sealed).expect("open");
        assert_eq!(opened.expose_secret(), "CJ-super-secret-access-token");
        // Two seals of one value differ (fresh nonce).
        assert_ne!(
            sealed,
            vault.seal(id, Slot::AccessToken, &secret).expect("seal")
        );
    }

    #[test]
    fn a_value_moved_to_another_row_or_column_or_tampered_will_not_open() {
        let vault = Vault::new(&key(1), &[]);
        let id = Uuid::new_v4();
        let sealed = vault
            .seal(id, Slot::RefreshToken, &SecretString::from("r"))
            .expect("seal");
        assert_eq!(
            vault
                .open(Uuid::new_v4(), Slot::RefreshToken, &sealed)
                .err(),
            Some(VaultError::Tampered)
        );
        assert_eq!(
            vault.open(id, Slot::AccessToken, &sealed).err(),
            Some(VaultError::Tampered)
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            vault.open(id, Slot::RefreshToken, &flipped).err(),
            Some(VaultError::Tampered)
        );
        assert_eq!(
            vault.open(id, Slot::RefreshToken, b"short").err(),
            Some(VaultError::Malformed)
        );
    }

    #[test]
    fn rotation_opens_old_values_and_seals_new_ones_under_the_new_key() {
        let old = Vault::new(&key(1), &[]);
        let id = Uuid::new_v4();
        let sealed = old
            .seal(id, Slot::AccessToken, &SecretString::from("t"))
            .expect("seal");
        let rotated = Vault::new(&key(2), &[key(1)]);
        assert_eq!(
            rotated
                .open(id, Slot::AccessToken, &sealed)
                .expect("open")
                .expose_secret(),
            "t"
        );
        let resealed = rotated
            .seal(id, Slot::AccessToken, &SecretString::from("t"))
            .expect("seal");
        assert_eq!(Vault::sealed_key_id(&resealed), Ok(rotated.key_id()));
        let new_only = Vault::new(&key(2), &[]);
        assert!(matches!(
            new_only.open(id, Slot::AccessToken, &sealed),
            Err(VaultError::UnknownKey(_))
        ));
    }
}
