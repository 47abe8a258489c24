//! Authentication: who is calling. Passwords ([`password`]) are checked only at the token
//! endpoint; every other request carries a signed access token ([`token`]) that is
//! verified without a database round trip once its principal is cached.
//!
//! Authorization (what the caller may do) is not here; see [`crate::policy`].

pub mod password;
pub mod token;

pub use password::PasswordHasher;

/// Why an authentication operation failed (not why a request was denied: that is a
/// `DenyReason` in the proxy).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A new password does not meet the length rules.
    #[error("{0}")]
    WeakPassword(String),
    /// bcrypt or sha256_crypt could not run.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// `bytes` random bytes from the OS, hex encoded: uniquifiers, salts, demo secrets.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source only fails on a broken platform; nothing can be done then
    // and continuing with predictable bytes would be worse.
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_has_the_asked_length_and_differs() {
        let a = super::random_hex(16);
        let b = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
