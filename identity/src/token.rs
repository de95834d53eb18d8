//! Local-mode workload tokens (DESIGN §5): `mesh token` mints them with the
//! identity service's HMAC key, and `Certify` verifies them. Format:
//! `v1.<base64url(json claims)>.<base64url(HMAC-SHA256(key, "v1." + payload))>`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const VERSION: &str = "v1";
const KEY_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not `v1.<payload>.<signature>` with valid base64url and JSON.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not match: wrong key or tampered token.
    #[error("token signature does not match (tampered, or signed with another key)")]
    BadSignature,
    /// The token's expiry is in the past.
    #[error("token expired at unix time {expired_at}")]
    Expired {
        /// Expiry, seconds since the Unix epoch.
        expired_at: u64,
    },
}

/// Why a token key could not be created, read or written.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {error}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not base64 of exactly 32 bytes.
    #[error("{path}: not a token key (expected base64 of {KEY_LEN} bytes)")]
    Invalid {
        /// The key file.
        path: PathBuf,
    },
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// The HMAC-SHA256 key that signs workload tokens (32 random bytes).
#[derive(Clone)]
pub struct TokenKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// Generates a fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self { bytes })
    }

    /// Reads a key file (base64, surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|error| KeyError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let invalid = || KeyError::Invalid {
            path: path.to_path_buf(),
        };
        let raw = STANDARD.decode(text.trim()).map_err(|_| invalid())?;
        let bytes: [u8; KEY_LEN] = raw.try_into().map_err(|_| invalid())?;
        Ok(Self { bytes })
    }

    /// Writes the key as base64 to `path`, mode 0600 (replacing any file there).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let io = |error| KeyError::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // `mode` only applies on creation: tighten a pre-existing file too.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        writeln!(file, "{}", STANDARD.encode(self.bytes)).map_err(io)
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.bytes)
    }
}

/// What a verified token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
    /// When the token stops being accepted.
    pub expires_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct WireClaims {
    ns: String,
    sa: String,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Mints a token for `namespace`/`service_account`, valid for `ttl` from now.
pub fn mint(key: &TokenKey, namespace: &str, service_account: &str, ttl: Duration) -> String {
    let claims = WireClaims {
        ns: namespace.to_string(),
        sa: service_account.to_string(),
        exp: unix_secs(SystemTime::now()).saturating_add(ttl.as_secs()),
    };
    // Serialising a struct of strings and an integer cannot fail.
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let signed = format!("{VERSION}.{payload}");
    let tag = hmac::sign(&key.hmac_key(), signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Verifies `token` against `key` at time `now`, returning its claims.
///
/// The signature is checked (in constant time) before the payload is parsed.
pub fn verify(key: &TokenKey, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(version), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected v1.<payload>.<signature>"));
    };
    if version != VERSION {
        return Err(TokenError::Malformed("unknown version (expected v1)"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let signed = &token[..version.len() + 1 + payload.len()];
    hmac::verify(&key.hmac_key(), signed.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let claims: WireClaims = serde_json::from_slice(&json)
        .map_err(|_| TokenError::Malformed("payload is not valid claims JSON"))?;
    if unix_secs(now) >= claims.exp {
        return Err(TokenError::Expired {
            expired_at: claims.exp,
        });
    }
    Ok(Claims {
        namespace: claims.ns,
        service_account: claims.sa,
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn flip_char(s: &str, at: usize) -> String {
        let mut b = s.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn round_trip() {
        let key = TokenKey::generate().unwrap();
        let token = mint(&key, "default", "web", HOUR);
        assert!(token.starts_with("v1."));
        let claims = verify(&key, &token, SystemTime::now()).unwrap();
        assert_eq!(claims.namespace, "default");
        assert_eq!(claims.service_account, "web");
        let left = claims.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(left > HOUR - Duration::from_secs(5) && left <= HOUR);
    }

    #[test]
    fn tampered_payload_is_refused() {
        let key = TokenKey::generate().unwrap();
        let token = mint(&key, "default", "web", HOUR);
        let other = mint(&key, "default", "admin", HOUR);
        // Swap in another (validly encoded) payload with the original signature.
        let (_, sig) = token.rsplit_once('.').unwrap();
        let (other_signed, _) = other.rsplit_once('.').unwrap();
        let forged = format!("{other_signed}.{sig}");
        assert_eq!(
            verify(&key, &forged, SystemTime::now()),
            Err(TokenError::BadSignature)
        );
        let flipped = flip_char(&token, 5);
        assert!(verify(&key, &flipped, SystemTime::now()).is_err());
    }

    #[test]
    fn tampered_signature_is_refused() {
        let key = TokenKey::generate().unwrap();
        let token = mint(&key, "default", "web", HOUR);
        let tampered = flip_char(&token, token.len() - 3);
        assert_eq!(
            verify(&key, &tampered, SystemTime::now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_key_is_refused() {
        let token = mint(&TokenKey::generate().unwrap(), "default", "web", HOUR);
        let other = TokenKey::generate().unwrap();
        assert_eq!(
            verify(&other, &token, SystemTime::now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired_is_refused() {
        let key = TokenKey::generate().unwrap();
        let token = mint(&key, "default", "web", Duration::from_secs(60));
        let later = SystemTime::now() + Duration::from_secs(61);
        let err = verify(&key, &token, later).unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }), "{err:?}");
        assert!(err.to_string().contains("expired"));
    }

    #[test]
    fn garbage_is_malformed() {
        let key = TokenKey::generate().unwrap();
        for bad in [
            "",
            "garbage",
            "v1.abc",
            "v2.abc.def",
            "v1.a.b.c",
            "v1.abc.!!!",
        ] {
            let err = verify(&key, bad, SystemTime::now()).unwrap_err();
            assert!(matches!(err, TokenError::Malformed(_)), "{bad}: {err:?}");
        }
        // Correctly signed but not JSON claims.
        let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(b"not json"));
        let tag = hmac::sign(&key.hmac_key(), signed.as_bytes());
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert!(matches!(
            verify(&key, &token, SystemTime::now()),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let key = TokenKey::generate().unwrap();
        key.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = TokenKey::load(&path).unwrap();
        let token = mint(&key, "a", "b", HOUR);
        assert!(verify(&loaded, &token, SystemTime::now()).is_ok());

        fs::write(&path, "not base64!").unwrap();
        assert!(matches!(
            TokenKey::load(&path),
            Err(KeyError::Invalid { .. })
        ));
        assert!(matches!(
            TokenKey::load(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }
}
