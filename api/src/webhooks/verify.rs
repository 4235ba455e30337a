//! Is a delivery genuine: GitHub's HMAC signature of the body, GitLab's token.

use ring::hmac;

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, checked in
/// constant time.
pub fn github_signature_is_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_signature) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(signature) = hex::decode(hex_signature) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, body, &signature).is_ok()
}

/// `X-Gitlab-Token` equal to the secret, compared in constant time (as HMACs under a
/// one-off key, which also hides the secret's length).
pub fn gitlab_token_is_valid(secret: &str, header: Option<&str>) -> bool {
    let Some(token) = header else {
        return false;
    };
    let rng = ring::rand::SystemRandom::new();
    let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &rng) else {
        return false;
    };
    let expected = hmac::sign(&key, secret.as_bytes());
    hmac::verify(&key, token.as_bytes(), expected.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_are_checked_against_the_raw_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()));
        assert!(github_signature_is_valid("secret", body, Some(&good)));
        assert!(!github_signature_is_valid("other", body, Some(&good)));
        assert!(!github_signature_is_valid(
            "secret",
            b"tampered",
            Some(&good)
        ));
        assert!(!github_signature_is_valid("secret", body, None));
        assert!(!github_signature_is_valid("secret", body, Some("sha1=abc")));
        assert!(!github_signature_is_valid(
            "secret",
            body,
            Some("sha256=zz")
        ));
    }

    #[test]
    fn gitlab_tokens_must_match_exactly() {
        assert!(gitlab_token_is_valid("s3cret", Some("s3cret")));
        assert!(!gitlab_token_is_valid("s3cret", Some("s3cre")));
        assert!(!gitlab_token_is_valid("s3cret", Some("s3cret ")));
        assert!(!gitlab_token_is_valid("s3cret", None));
    }
}
