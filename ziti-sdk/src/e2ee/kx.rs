//! libsodium-compatible `crypto_kx`: X25519 key pairs and BLAKE2b-derived session keys.
//!
//! Written here rather than taken from the `crypto_kx` crate, whose rx/tx are swapped relative to
//! libsodium (it would silently fail against the Go and C SDKs).

use blake2::{Blake2b256, Blake2b512, Digest};
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use super::E2eeError;

/// An X25519 public key as sent in edge header 1003.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Length in bytes.
    pub const BYTES: usize = 32;

    /// Parses a header value; it must be exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, E2eeError> {
        <[u8; 32]>::try_from(b)
            .map(Self)
            .map_err(|_| E2eeError::BadKeyLength(b.len()))
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// An X25519 key pair (libsodium `crypto_kx_keypair`). The secret is wiped on drop.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random key pair (OS randomness), like `crypto_kx_keypair`.
    pub fn generate() -> Self {
        let mut sk = [0u8; 32];
        rand::fill(&mut sk);
        let kp = Self::from_secret_bytes(sk);
        sk.zeroize();
        kp
    }

    /// Deterministic key pair like `crypto_kx_seed_keypair`: the secret key is
    /// BLAKE2b with a 32-byte **output length** over the seed (not a truncated BLAKE2b-512).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut sk: [u8; 32] = Blake2b256::digest(seed).into();
        let kp = Self::from_secret_bytes(sk);
        sk.zeroize();
        kp
    }

    /// A key pair from raw secret-key bytes (libsodium stores them unclamped; clamping happens
    /// inside every scalar multiplication).
    pub fn from_secret_bytes(sk: [u8; 32]) -> Self {
        let secret = StaticSecret::from(sk);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The public key to put in header 1003.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The raw secret key (for tests and persisting a host key).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// Session keys for the **client** (dialer) side, `crypto_kx_client_session_keys`.
    pub fn client_session_keys(&self, server_pk: &PublicKey) -> Result<SessionKeys, E2eeError> {
        let mut h = self.shared_hash(server_pk, &self.public, server_pk)?;
        let keys = SessionKeys {
            rx: SessionKey::from_slice32(&h[..32]),
            tx: SessionKey::from_slice32(&h[32..]),
        };
        h.zeroize();
        Ok(keys)
    }

    /// Session keys for the **server** (host) side, `crypto_kx_server_session_keys`.
    pub fn server_session_keys(&self, client_pk: &PublicKey) -> Result<SessionKeys, E2eeError> {
        let mut h = self.shared_hash(client_pk, client_pk, &self.public)?;
        let keys = SessionKeys {
            rx: SessionKey::from_slice32(&h[32..]),
            tx: SessionKey::from_slice32(&h[..32]),
        };
        h.zeroize();
        Ok(keys)
    }

    /// `BLAKE2b-512(X25519(sk, peer) || client_pk || server_pk)`.
    fn shared_hash(
        &self,
        peer: &PublicKey,
        client_pk: &PublicKey,
        server_pk: &PublicKey,
    ) -> Result<[u8; 64], E2eeError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        // libsodium's crypto_scalarmult fails on an all-zero result; so do we.
        if !shared.was_contributory() {
            return Err(E2eeError::WeakPeerKey);
        }
        let mut hasher = Blake2b512::new();
        hasher.update(shared.as_bytes());
        hasher.update(client_pk.0);
        hasher.update(server_pk.0);
        Ok(hasher.finalize().into())
    }
}

/// One 32-byte directional session key. Wiped on drop; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_slice32(s: &[u8]) -> Self {
        let mut k = [0u8; 32];
        for (d, v) in k.iter_mut().zip(s) {
            *d = *v;
        }
        Self(k)
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// The pair of keys one side uses: `rx` to build its [`super::Decryptor`], `tx` for its
/// [`super::Encryptor`]. The client's `rx` is the server's `tx` and vice versa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Key for data received from the peer.
    pub rx: SessionKey,
    /// Key for data sent to the peer.
    pub tx: SessionKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_order_peer_is_rejected() {
        let kp = KeyPair::from_seed(&[1; 32]);
        for bad in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let pk = PublicKey::from(bad);
            assert_eq!(kp.client_session_keys(&pk), Err(E2eeError::WeakPeerKey));
            assert_eq!(kp.server_session_keys(&pk), Err(E2eeError::WeakPeerKey));
        }
    }

    #[test]
    fn roles_agree_and_debug_hides_secrets() {
        let c = KeyPair::generate();
        let s = KeyPair::generate();
        assert_ne!(c.public_key(), s.public_key());
        let ck = c.client_session_keys(&s.public_key()).unwrap();
        let sk = s.server_session_keys(&c.public_key()).unwrap();
        assert_eq!(ck.rx, sk.tx);
        assert_eq!(ck.tx, sk.rx);
        assert_ne!(ck.rx, ck.tx);
        let dbg = format!("{c:?} {ck:?}");
        assert!(!dbg.contains(&hex::encode(c.secret_bytes())));
        assert!(!dbg.contains(&hex::encode(ck.tx.as_bytes())));
        assert_eq!(
            PublicKey::from_slice(&[0; 31]),
            Err(E2eeError::BadKeyLength(31))
        );
    }
}
