//! Wire-format vectors, codec properties, and circuits wired back to back, directly or through
//! a simulated lossy, reordering link on a virtual clock.

mod lifecycle;
mod network;
mod sim;
mod wire;

/// Wall-clock time the simulated hosts agree on at the start.
const UNIX_MS: u64 = 1_700_000_000_000;

/// xorshift64*; deterministic test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn per_mille(&mut self, p: u64) -> bool {
        self.next() % 1000 < p
    }
}

/// `len` pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| (rng.next() >> 32) as u8).collect()
}
