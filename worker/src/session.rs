//! Guest sessions as signed tokens: who a guest is and which rooms it is in, so that a client that
//! reconnects — to any instance of the app, e.g. after a rolling reload — gets the same identity
//! and its rooms back without user action.
//!
//! A token is `v1.<payload>.<signature>`: the payload is base64url JSON `{id, name, rooms, exp}`, the
//! signature an HMAC-SHA256 of `v1.<payload>` with the app's session secret. Every instance of an
//! app shares the secret (`CHAT_SESSION_SECRET`, else the one the supervisor gives the app), so any
//! of them can verify what another issued; no shared store is needed on one host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION: &str = "v1";

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: String,
    pub name: String,
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed session token")]
    Malformed,
    #[error("session token signature does not match (forged, or issued with another secret)")]
    Forged,
    #[error("session token expired")]
    Expired,
}

#[derive(Clone)]
pub struct Sessions {
    secret: Vec<u8>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(secret: Vec<u8>, ttl: Duration) -> Sessions {
        Sessions { secret, ttl }
    }

    pub fn issue(&self, id: &str, name: &str, rooms: Vec<String>) -> String {
        let exp = now_secs() + self.ttl.as_secs();
        let claims = Claims { id: id.to_owned(), name: name.to_owned(), rooms, exp };
        // Serializing strings and integers cannot fail.
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison.
        self.mac(signed).verify_slice(&signature).map_err(|_| TokenError::Forged)?;
        claims_of(payload)
    }

    /// What a token says, without checking who signed it: for a token another host issued with its
    /// own secret, which is then believed only if the shared store holds that very token.
    pub fn unverified(token: &str) -> Result<Claims, TokenError> {
        let (signed, _) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        claims_of(payload)
    }

    fn mac(&self, data: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("UNWRAP: HMAC takes keys of any length");
        mac.update(data.as_bytes());
        mac
    }
}

fn claims_of(payload: &str) -> Result<Claims, TokenError> {
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now_secs() {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 32 random bytes from the kernel, for a worker run without a configured secret.
pub fn random_secret() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_forge_expire() {
        let sessions = Sessions::new(b"secret".to_vec(), Duration::from_secs(60));
        let token = sessions.issue("g_1", "ann", vec!["lobby".into()]);
        let claims = sessions.verify(&token).expect("valid");
        assert_eq!(
            (claims.id.as_str(), claims.name.as_str(), claims.rooms.clone()),
            ("g_1", "ann", vec!["lobby".to_owned()])
        );

        let other = Sessions::new(b"another".to_vec(), Duration::from_secs(60));
        assert_eq!(other.verify(&token), Err(TokenError::Forged));
        assert_eq!(Sessions::unverified(&token), Ok(claims.clone()), "readable, not trusted");
        let (signed, _) = token.rsplit_once('.').expect("dot");
        let tampered = format!("{}.{}", signed.replace('e', "f"), token.rsplit_once('.').expect("dot").1);
        assert!(matches!(sessions.verify(&tampered), Err(TokenError::Forged | TokenError::Malformed)));
        assert_eq!(sessions.verify("nonsense"), Err(TokenError::Malformed));

        let expired = Sessions::new(b"secret".to_vec(), Duration::ZERO).issue("g_1", "ann", vec![]);
        assert_eq!(sessions.verify(&expired), Err(TokenError::Expired));
    }
}
