//! The URLs we hand to clients. With authentication on, image download links carry their own proof, so they work
//! where no header can be sent (`<img src>`): `?expires=UNIX&signature=HEX`, an HMAC-SHA256 over the image id, its
//! owner and the expiry, with DOWNLOAD_SIGNING_KEY. The owner is in the MAC, not in the URL: a link cannot be
//! re-pointed at another owner's image, and the check is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use imagegen_shared::domain::ImageId;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks download links.
#[derive(Clone)]
pub struct LinkSigner {
    key: SecretString,
    ttl: Duration,
}

impl fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSigner")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LinkSigner {
    pub fn new(key: SecretString, ttl: Duration) -> Self {
        Self { key, ttl }
    }

    fn mac(&self, image: ImageId, owner: &str, expires: u64) -> HmacSha256 {
        // Any key length is valid for HMAC; `new_from_slice` cannot fail for it.
        let mut mac = HmacSha256::new_from_slice(self.key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{image}\n{owner}\n{expires}").as_bytes());
        mac
    }

    /// `expires=...&signature=...` for a link valid for the configured time.
    pub fn query(&self, image: ImageId, owner: &str) -> String {
        let expires = now_secs() + self.ttl.as_secs();
        let signature = hex::encode(self.mac(image, owner, expires).finalize().into_bytes());
        format!("expires={expires}&signature={signature}")
    }

    /// Whether a link's `expires` and `signature` are genuine for this image and owner and not yet expired.
    pub fn verify(&self, image: ImageId, owner: &str, expires: u64, signature: &str) -> bool {
        if expires < now_secs() {
            return false;
        }
        let Ok(given) = hex::decode(signature) else {
            return false;
        };
        self.mac(image, owner, expires).verify_slice(&given).is_ok()
    }
}

/// Where our links point (PUBLIC_BASE_URL, else the Host the client used), and how downloads are signed.
#[derive(Debug, Clone)]
pub struct Links {
    pub base: String,
    pub signer: Option<Arc<LinkSigner>>,
}

impl fmt::Display for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl Links {
    /// An image's download URL; signed when authentication is on.
    pub fn download(&self, image: ImageId, owner: &str) -> String {
        let url = format!("{}/api/v1/images/{image}/download", self.base);
        match &self.signer {
            Some(signer) => format!("{url}?{}", signer.query(image, owner)),
            None => url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(
            SecretString::from("0123456789abcdef0123456789abcdef".to_owned()),
            Duration::from_secs(60),
        )
    }

    fn parts(query: &str) -> (u64, String) {
        let mut expires = 0;
        let mut signature = String::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse().expect("number"),
                Some(("signature", v)) => signature = v.to_owned(),
                _ => {}
            }
        }
        (expires, signature)
    }

    #[test]
    fn a_link_is_bound_to_its_image_owner_and_expiry() {
        let s = signer();
        let image = ImageId::new();
        let (expires, signature) = parts(&s.query(image, "alice"));
        assert!(s.verify(image, "alice", expires, &signature));
        assert!(
            !s.verify(image, "bob", expires, &signature),
            "another owner"
        );
        assert!(
            !s.verify(ImageId::new(), "alice", expires, &signature),
            "another image"
        );
        assert!(
            !s.verify(image, "alice", expires + 1, &signature),
            "a longer life"
        );
        assert!(
            !s.verify(image, "alice", expires, "00"),
            "a forged signature"
        );
        assert!(!s.verify(image, "alice", expires, "zz"), "not hex");
        let (old, old_sig) = (
            1,
            hex::encode(s.mac(image, "alice", 1).finalize().into_bytes()),
        );
        assert!(!s.verify(image, "alice", old, &old_sig), "expired");
        let other = LinkSigner::new(
            SecretString::from("another key of 32 characters....".to_owned()),
            Duration::from_secs(60),
        );
        assert!(
            !other.verify(image, "alice", expires, &signature),
            "another key"
        );
    }
}
