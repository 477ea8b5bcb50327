//! `crypto_secretstream_xchacha20poly1305` push/pull wrappers with the Ziti conventions:
//! every message uses TAG_MESSAGE and no additional data, and the stream never rekeys on its own.

use crypto_secretstream::{Header, Key, PullStream, PushStream, Tag};
use rand_core::{CryptoRng, RngCore};

use super::{E2eeError, SessionKey};

/// Length of the stream header sent as the first Data body.
pub const HEADER_BYTES: usize = 24;
/// Bytes a pushed message grows by: 1 encrypted tag byte + 16-byte Poly1305 MAC.
pub const ABYTES: usize = 17;

/// The secretstream message tag. Ziti senders only use [`StreamTag::Message`]; receivers ignore
/// the tag, but a `Rekey` tag still changes the key (libsodium semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTag {
    /// `TAG_MESSAGE` (0): an ordinary message.
    Message,
    /// `TAG_PUSH` (1): end of a set of messages.
    Push,
    /// `TAG_REKEY` (2): both sides derive a new key after this message.
    Rekey,
    /// `TAG_FINAL` (3): end of stream.
    Final,
}

impl From<StreamTag> for Tag {
    fn from(t: StreamTag) -> Self {
        match t {
            StreamTag::Message => Tag::Message,
            StreamTag::Push => Tag::Push,
            StreamTag::Rekey => Tag::Rekey,
            StreamTag::Final => Tag::Final,
        }
    }
}

impl From<Tag> for StreamTag {
    fn from(t: Tag) -> Self {
        match t {
            Tag::Message => StreamTag::Message,
            Tag::Push => StreamTag::Push,
            Tag::Rekey => StreamTag::Rekey,
            Tag::Final => StreamTag::Final,
        }
    }
}

/// Sending half of an encrypted connection.
pub struct Encryptor {
    stream: PushStream,
    finished: bool,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encryptor(..)")
    }
}

impl Encryptor {
    /// Starts a stream with the `tx` session key and a random header. Send the returned header
    /// as the connection's first Data body, before any [`Encryptor::push`] output.
    pub fn new(tx: &SessionKey) -> (Self, [u8; HEADER_BYTES]) {
        let (header, stream) = PushStream::init(rand_core::OsRng, &Key::from(*tx.as_bytes()));
        (
            Self {
                stream,
                finished: false,
            },
            *header.as_ref(),
        )
    }

    /// Starts a stream with a caller-chosen header, producing libsodium's exact output for that
    /// header (known-answer tests, benchmarks).
    ///
    /// **Never reuse a header with the same key on a real connection**: the keystream would
    /// repeat. Use [`Encryptor::new`].
    pub fn with_fixed_header(tx: &SessionKey, header: [u8; HEADER_BYTES]) -> Self {
        let (_, stream) = PushStream::init(ReplayRng(header, 0), &Key::from(*tx.as_bytes()));
        Self {
            stream,
            finished: false,
        }
    }

    /// Encrypts one message with TAG_MESSAGE; the result (`plain.len() + 17` bytes) is one Data
    /// body.
    pub fn push(&mut self, plain: &[u8]) -> Result<Vec<u8>, E2eeError> {
        self.push_tagged(plain, StreamTag::Message)
    }

    /// Encrypts one message with an explicit tag (interop tests; Ziti peers expect
    /// [`StreamTag::Message`]).
    ///
    /// After a [`StreamTag::Final`] message the stream is over and further pushes fail with
    /// [`E2eeError::StreamFinished`]: libsodium would rekey after FINAL (its tag value includes
    /// the REKEY bit) while the underlying `crypto_secretstream` crate does not, so continuing
    /// would silently diverge from libsodium.
    pub fn push_tagged(&mut self, plain: &[u8], tag: StreamTag) -> Result<Vec<u8>, E2eeError> {
        if self.finished {
            return Err(E2eeError::StreamFinished);
        }
        let mut buf = Vec::with_capacity(plain.len() + ABYTES);
        buf.extend_from_slice(plain);
        self.stream
            .push(&mut buf, &[], tag.into())
            .map_err(|_| E2eeError::Encrypt)?;
        self.finished = tag == StreamTag::Final;
        Ok(buf)
    }
}

/// Receiving half of an encrypted connection.
pub struct Decryptor {
    stream: PullStream,
    finished: bool,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decryptor(..)")
    }
}

impl Decryptor {
    /// Builds the pull state from the peer's stream header (the first Data body, which must be
    /// exactly 24 bytes) and the `rx` session key.
    pub fn new(rx: &SessionKey, header: &[u8]) -> Result<Self, E2eeError> {
        let header =
            Header::try_from(header).map_err(|_| E2eeError::BadHeaderLength(header.len()))?;
        Ok(Self {
            stream: PullStream::init(header, &Key::from(*rx.as_bytes())),
            finished: false,
        })
    }

    /// Decrypts one Data body and returns the plaintext (the tag is ignored, as the Go and C
    /// SDKs do). On error the state is unchanged, but the connection should be closed: the
    /// stream has lost sync or is under attack.
    pub fn pull(&mut self, cipher: &[u8]) -> Result<Vec<u8>, E2eeError> {
        self.pull_tagged(cipher).map(|(plain, _)| plain)
    }

    /// Like [`Decryptor::pull`], also returning the message tag. Nothing can be pulled after a
    /// [`StreamTag::Final`] message (see [`Encryptor::push_tagged`]).
    pub fn pull_tagged(&mut self, cipher: &[u8]) -> Result<(Vec<u8>, StreamTag), E2eeError> {
        if self.finished {
            return Err(E2eeError::StreamFinished);
        }
        if cipher.len() < ABYTES {
            return Err(E2eeError::MessageTooShort(cipher.len()));
        }
        let mut buf = cipher.to_vec();
        let tag = self
            .stream
            .pull(&mut buf, &[])
            .map_err(|_| E2eeError::Decrypt)?;
        let tag = StreamTag::from(tag);
        self.finished = tag == StreamTag::Final;
        Ok((buf, tag))
    }
}

/// An "RNG" that returns a fixed header, so `PushStream::init` can be driven deterministically.
struct ReplayRng([u8; HEADER_BYTES], usize);

impl RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            *d = self.0.get(self.1).copied().unwrap_or(0);
            self.1 += 1;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Only used to replay a header the caller already chose; see `with_fixed_header`.
impl CryptoRng for ReplayRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = SessionKey::from_bytes([9; 32]);
        let (mut enc, header) = Encryptor::new(&key);
        let mut dec = Decryptor::new(&key, &header).unwrap();
        let c1 = enc.push(b"abc").unwrap();
        assert_eq!(c1.len(), 3 + ABYTES);
        let mut bad = c1.clone();
        bad[5] ^= 0x01;
        assert_eq!(dec.pull(&bad), Err(E2eeError::Decrypt));
        // State unchanged after a failure: the genuine message still decrypts.
        assert_eq!(dec.pull(&c1).unwrap(), b"abc");
        // Replay of the same message fails (nonce moved on).
        assert_eq!(dec.pull(&c1), Err(E2eeError::Decrypt));
        assert_eq!(dec.pull(&[0; 16]), Err(E2eeError::MessageTooShort(16)));
        // FINAL ends the stream on both sides.
        let fin = enc.push_tagged(b"end", StreamTag::Final).unwrap();
        assert_eq!(enc.push(b"more"), Err(E2eeError::StreamFinished));
        assert_eq!(
            dec.pull_tagged(&fin).unwrap(),
            (b"end".to_vec(), StreamTag::Final)
        );
        assert_eq!(dec.pull(&fin), Err(E2eeError::StreamFinished));
        assert_eq!(
            Decryptor::new(&key, &[0; 23]).err(),
            Some(E2eeError::BadHeaderLength(23))
        );
    }

    #[test]
    fn fuzz_entry_handles_random_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..500 {
            let len = rng.random_range(0..300);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            super::super::fuzz_pull(&data);
        }
    }
}
