//! Credentials at rest: a Fernet key ring. The first key encrypts; every key decrypts,
//! so keys can be rotated without downtime.

use std::fmt;
use std::sync::Arc;

use fernet::{Fernet, MultiFernet};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    #[error("no key given")]
    Empty,
    #[error("entry {0} is not a Fernet key (32 bytes, URL-safe base64)")]
    NotAFernetKey(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("the stored credential cannot be decrypted with any configured key")]
pub struct DecryptError;

#[derive(Clone)]
pub struct KeyRing {
    keys: Arc<MultiFernet>,
    count: usize,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} keys, redacted)", self.count)
    }
}

impl KeyRing {
    /// Parses a comma-separated list of Fernet keys.
    pub fn parse(keys: &str) -> Result<Self, KeyRingError> {
        let fernets = keys
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .enumerate()
            .map(|(index, key)| Fernet::new(key).ok_or(KeyRingError::NotAFernetKey(index + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if fernets.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(KeyRing {
            count: fernets.len(),
            keys: Arc::new(MultiFernet::new(fernets)),
        })
    }

    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        self.keys.encrypt(plaintext.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<SecretString, DecryptError> {
        let bytes = self.keys.decrypt(token).map_err(|_| DecryptError)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| DecryptError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn first_key_encrypts_and_any_key_decrypts() {
        let old = KeyRing::generate_key();
        let new = KeyRing::generate_key();
        let old_ring = KeyRing::parse(&old).unwrap();
        let token = old_ring.encrypt("secret");
        let rotated = KeyRing::parse(&format!("{new},{old}")).unwrap();
        assert_eq!(rotated.decrypt(&token).unwrap().expose_secret(), "secret");
        let reencrypted = rotated.encrypt("secret");
        let new_only = KeyRing::parse(&new).unwrap();
        assert_eq!(
            new_only.decrypt(&reencrypted).unwrap().expose_secret(),
            "secret"
        );
        assert!(new_only.decrypt(&token).is_err());
    }

    #[test]
    fn bad_keys_are_refused_by_position() {
        let good = KeyRing::generate_key();
        assert_eq!(
            KeyRing::parse(&format!("{good},nope")).unwrap_err(),
            KeyRingError::NotAFernetKey(2)
        );
        assert_eq!(KeyRing::parse(" , ").unwrap_err(), KeyRingError::Empty);
    }

    #[test]
    fn debug_never_shows_keys() {
        let key = KeyRing::generate_key();
        let ring = KeyRing::parse(&key).unwrap();
        assert!(!format!("{ring:?}").contains(&key));
    }
}
