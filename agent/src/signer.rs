//! Signed directory-server URLs (spec §9): HMAC-SHA512 over `<url path>?<path & timestamp,
//! sorted, form-encoded>` with a key drawn at every boot, so every URL dies with the agent.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha512;

/// URLs older than this are refused (spec §9: one hour).
pub const MAX_AGE_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// 400: `hmac`, `timestamp` or `path` is missing, or `timestamp` is not an integer.
    #[error("missing or malformed parameter: {0}")]
    Malformed(&'static str),
    /// 401 `Invalid HMAC`.
    #[error("Invalid HMAC")]
    InvalidHmac,
    /// 400 `Url expired`.
    #[error("Url expired")]
    Expired,
}

impl VerifyError {
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::InvalidHmac => 401,
            _ => 400,
        }
    }
}

pub struct Signer {
    key: [u8; 64],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with a fresh random key.
    pub fn random() -> Signer {
        let mut key = [0u8; 64];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        Signer { key }
    }

    fn mac(&self, url_path: &str, path: &str, timestamp: &str) -> Hmac<Sha512> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("path", path)
            .append_pair("timestamp", timestamp)
            .finish();
        let mut mac = Hmac::<Sha512>::new_from_slice(&self.key).expect("hmac takes any key");
        mac.update(url_path.as_bytes());
        mac.update(b"?");
        mac.update(query.as_bytes());
        mac
    }

    /// The query string (`hmac=..&path=..&timestamp=..`, sorted) that signs `url_path` for
    /// `path` at `timestamp` (unix seconds).
    pub fn signed_query(&self, url_path: &str, path: &str, timestamp: u64) -> String {
        let ts = timestamp.to_string();
        let hmac = hex::encode(self.mac(url_path, path, &ts).finalize().into_bytes());
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("hmac", &hmac)
            .append_pair("path", path)
            .append_pair("timestamp", &ts)
            .finish()
    }

    /// Check a request's parameters against `url_path` at time `now` (unix seconds):
    /// presence, then the HMAC in constant time, then age.
    pub fn verify(
        &self,
        url_path: &str,
        params: &BTreeMap<String, String>,
        now: u64,
    ) -> Result<(), VerifyError> {
        let hmac = params.get("hmac").ok_or(VerifyError::Malformed("hmac"))?;
        let ts = params
            .get("timestamp")
            .ok_or(VerifyError::Malformed("timestamp"))?;
        let path = params.get("path").ok_or(VerifyError::Malformed("path"))?;
        let timestamp: u64 = ts
            .parse()
            .map_err(|_| VerifyError::Malformed("timestamp"))?;
        let given = hex::decode(hmac).map_err(|_| VerifyError::InvalidHmac)?;
        self.mac(url_path, path, ts)
            .verify_slice(&given)
            .map_err(|_| VerifyError::InvalidHmac)?;
        if now.saturating_sub(timestamp) > MAX_AGE_SECS {
            return Err(VerifyError::Expired);
        }
        Ok(())
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn signed_urls_verify_and_tampering_is_refused() {
        let s = Signer::random();
        let q = s.signed_query("/instance_paths/abc", "/logs", 1000);
        assert!(q.starts_with("hmac="), "{q}");
        assert!(q.contains("path=%2Flogs"), "{q}");
        assert_eq!(s.verify("/instance_paths/abc", &params(&q), 1001), Ok(()));
        // Another instance, another path, another key, an old timestamp.
        assert_eq!(
            s.verify("/instance_paths/abd", &params(&q), 1001),
            Err(VerifyError::InvalidHmac)
        );
        let altered = q.replace("%2Flogs", "%2Fapp");
        assert_eq!(
            s.verify("/instance_paths/abc", &params(&altered), 1001),
            Err(VerifyError::InvalidHmac)
        );
        assert_eq!(
            Signer::random().verify("/instance_paths/abc", &params(&q), 1001),
            Err(VerifyError::InvalidHmac)
        );
        assert_eq!(
            s.verify("/instance_paths/abc", &params(&q), 1000 + MAX_AGE_SECS + 1),
            Err(VerifyError::Expired)
        );
        let mut p = params(&q);
        p.remove("timestamp");
        assert_eq!(
            s.verify("/instance_paths/abc", &p, 1001),
            Err(VerifyError::Malformed("timestamp"))
        );
        // Extra parameters (tail) do not break the signature.
        let tail = format!("{q}&tail=true");
        assert_eq!(
            s.verify("/instance_paths/abc", &params(&tail), 1001),
            Ok(())
        );
    }
}
