//! End-to-end encryption between two SDKs, byte-compatible with libsodium as used by the Go and
//! C SDKs: `crypto_kx` (X25519 + BLAKE2b-512) for session keys and
//! `crypto_secretstream_xchacha20poly1305` for the data.
//!
//! Roles: the **dialer is the kx client** (fresh [`KeyPair`](crate::e2ee::KeyPair) per dial, public key in Connect
//! header 1003); the **host is the kx server** (one key pair per hosted service, public key in
//! Bind header 1003). Each side sends the 24-byte stream header of its [`Encryptor`](crate::e2ee::Encryptor) as the first
//! Data body, then one secretstream message per Data body; the peer builds a [`Decryptor`](crate::e2ee::Decryptor) from
//! the first Data body it receives. FIN frames stay unencrypted.
//!
//!
//! ```
//! use ziti_sdk::e2ee::{Decryptor, Encryptor, KeyPair};
//!
//! let dialer = KeyPair::generate();
//! let host = KeyPair::generate();
//! let dialer_keys = dialer.client_session_keys(&host.public_key())?;
//! let host_keys = host.server_session_keys(&dialer.public_key())?;
//!
//! // Dialer -> host
//! let (mut enc, header) = Encryptor::new(&dialer_keys.tx);
//! let wire = enc.push(b"hello")?;                  // len + 17 bytes
//! let mut dec = Decryptor::new(&host_keys.rx, &header)?;
//! assert_eq!(dec.pull(&wire)?, b"hello");
//! # Ok::<(), ziti_sdk::e2ee::E2eeError>(())
//! ```

mod kx;
mod stream;

pub use kx::{KeyPair, PublicKey, SessionKey, SessionKeys};
pub use stream::{ABYTES, Decryptor, Encryptor, HEADER_BYTES, StreamTag};

/// Errors of the end-to-end encryption layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// A public key (header 1003) that is not 32 bytes.
    #[error("peer public key must be 32 bytes, got {0}")]
    BadKeyLength(usize),
    /// The peer's public key is a low-order point: the shared secret would be predictable.
    #[error("peer public key is a low-order point; refusing key exchange")]
    WeakPeerKey,
    /// The first Data body of an encrypted connection must be the 24-byte stream header.
    #[error("expected a 24-byte secretstream header, got {0} bytes")]
    BadHeaderLength(usize),
    /// A ciphertext shorter than the 17-byte overhead.
    #[error("encrypted message of {0} bytes is shorter than the 17-byte overhead")]
    MessageTooShort(usize),
    /// Authentication failed: wrong key, corrupted or reordered data.
    #[error("end-to-end decryption failed (wrong key, corrupted or reordered data)")]
    Decrypt,
    /// A message after one tagged FINAL: the stream is over.
    #[error("secretstream already finished (a FINAL message was sent or received)")]
    StreamFinished,
    /// The encryption primitive refused the message (only for absurd lengths).
    #[error("end-to-end encryption failed")]
    Encrypt,
}

/// Fuzz entry point: the first 24 bytes form a stream header, the next byte picks a key, the
/// rest is a sequence of `u16 LE length | ciphertext` messages pulled in order. Must never
/// panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_pull(data: &[u8]) {
    let Some((header, rest)) = data.split_at_checked(HEADER_BYTES) else {
        let _ = Decryptor::new(&SessionKey::from_bytes([0; 32]), data);
        return;
    };
    let Some((key_byte, mut rest)) = rest.split_first() else {
        return;
    };
    let key = SessionKey::from_bytes([*key_byte; 32]);
    let Ok(mut dec) = Decryptor::new(&key, header) else {
        return;
    };
    while let Some((len, tail)) = rest.split_at_checked(2) {
        let n = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (msg, tail) = tail.split_at_checked(n).unwrap_or((tail, &[]));
        let _ = dec.pull_tagged(msg);
        rest = tail;
    }
}
