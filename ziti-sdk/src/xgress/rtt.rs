//! Round-trip time and retransmission timeout, as the Go send buffer computes them
//! (sdk-golang `xgress/link_send_buffer.go` `receiveAcknowledgement`; `xgress/rtt.md` explains
//! why Go keeps this simple scheme).
//!
//! * The sender stamps every payload with the low 16 bits of the Unix time in milliseconds
//!   ([`RttClock`]); the receiver echoes the stamp of the payload it acknowledges;
//!   `now - echo` is one sample. It must be wall-clock Unix time, not a private clock: every
//!   router that forwards a payload re-stamps it with its own `uint16(NowInMilliseconds())`
//!   (sdk-golang `messages.go` `Payload.Marshall`, called by the router's link and edge
//!   senders), so the echo we get back is usually a router's stamp.
//! * Not in Go: when an acknowledgement covers a payload we sent exactly once, the sample is
//!   our own send-to-acknowledgement time instead (Karn's rule). The echo measures only from
//!   the last router on, not the payloads waiting in our own transmit queue, and a timeout
//!   below the real round trip resends data that was never lost.
//! * Not in Go: a sample of 32768 ms or more (an echo from a clock ahead of ours, as seen in
//!   16-bit wrapping arithmetic) is ignored; Go takes it and ends up near `retx_max`.
//! * A sample is capped at `max_rtt_scale` times the previous estimate, then averaged with it:
//!   `rtt = (sample + last) / 2`.
//! * Retransmission timeout = `rtt * retx_scale + retx_add`, capped at `retx_max`.
//!   `retx_scale` starts at the option value, grows by 0.2 every `tx_portal_dup_ack_thresh`
//!   duplicate acknowledgements (we retransmit too early) and shrinks by 0.01 (never below the
//!   option value) every `tx_portal_increase_thresh` good ones.

use std::time::{Duration, Instant};

use super::options::Options;

/// How far the retransmit multiplier may grow (Go has no cap; the timeout itself is capped by
/// `retx_max`, this only keeps the float finite).
const MAX_RETX_SCALE: f64 = 1000.0;

/// Samples at or above this are treated as clock skew, not round trips.
const MAX_SAMPLE_MS: u16 = 0x8000;

/// Go's RTT clock, `uint16(NowInMilliseconds())`, derived from a monotonic `Instant` and the
/// Unix time in milliseconds at one known instant (the shell reads the wall clock once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttClock {
    epoch: Instant,
    unix_ms_at_epoch: u64,
}

impl RttClock {
    pub(crate) fn new(epoch: Instant, unix_ms_at_epoch: u64) -> Self {
        Self {
            epoch,
            unix_ms_at_epoch,
        }
    }

    /// The stamp for a payload sent at `now`. Never 0, because 0 means "no stamp" in an
    /// acknowledgement (a 1 ms error once every 65.5 s).
    pub(crate) fn stamp(&self, now: Instant) -> u16 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        match (self.unix_ms_at_epoch.wrapping_add(elapsed) & 0xFFFF) as u16 {
            0 => 1,
            v => v,
        }
    }
}

/// RTT estimate and retransmission timeout of one send buffer.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    /// Smoothed RTT in ms; 0 until the first sample (Go `lastRtt`).
    last_rtt_ms: u16,
    retx_scale: f64,
    retx_threshold_ms: u32,
    samples: u64,
}

impl RttEstimator {
    pub(crate) fn new(opts: &Options) -> Self {
        Self {
            last_rtt_ms: 0,
            retx_scale: opts.retx_scale,
            retx_threshold_ms: millis_u32(opts.retx_start),
            samples: 0,
        }
    }

    /// Takes one sample: `echo` is the stamp the acknowledgement carried, `now_stamp` the
    /// clock now. An echo of 0 carries no sample.
    pub(crate) fn on_sample(&mut self, echo: u16, now_stamp: u16, opts: &Options) {
        if echo == 0 {
            return;
        }
        let rtt = now_stamp.wrapping_sub(echo);
        if rtt >= MAX_SAMPLE_MS {
            return;
        }
        self.take(rtt, opts);
    }

    /// Takes one sample measured by the sender itself: from a payload's (only) transmission to
    /// its acknowledgement.
    pub(crate) fn on_measured(&mut self, rtt: Duration, opts: &Options) {
        let ms = u16::try_from(rtt.as_millis())
            .unwrap_or(u16::MAX)
            .min(MAX_SAMPLE_MS - 1);
        self.take(ms, opts);
    }

    fn take(&mut self, mut rtt: u16, opts: &Options) {
        if self.last_rtt_ms > 0 && opts.max_rtt_scale > 0 {
            // Go multiplies in u16 and can wrap; saturate instead.
            rtt = rtt.min(self.last_rtt_ms.saturating_mul(opts.max_rtt_scale));
        }
        if self.last_rtt_ms > 0 {
            // Go adds in u16 and can wrap; average in u32 instead.
            let avg = (u32::from(rtt) + u32::from(self.last_rtt_ms)) >> 1;
            rtt = u16::try_from(avg).unwrap_or(u16::MAX);
        }
        self.last_rtt_ms = rtt;
        self.samples += 1;
        self.recompute(opts);
    }

    /// Every `tx_portal_increase_thresh` acknowledged payloads.
    pub(crate) fn on_good_acks(&mut self, opts: &Options) {
        self.retx_scale = (self.retx_scale - 0.01).max(opts.retx_scale);
    }

    /// Every `tx_portal_dup_ack_thresh` duplicate acknowledgements.
    pub(crate) fn on_duplicate_acks(&mut self) {
        self.retx_scale = (self.retx_scale + 0.2).min(MAX_RETX_SCALE);
    }

    fn recompute(&mut self, opts: &Options) {
        // Go computes the threshold only when a sample arrives; scale changes apply then.
        let scaled = (f64::from(self.last_rtt_ms) * self.retx_scale) as u32;
        let mut thr = scaled.saturating_add(millis_u32(opts.retx_add));
        let max = millis_u32(opts.retx_max);
        if max > 0 {
            thr = thr.min(max);
        }
        self.retx_threshold_ms = thr;
    }

    /// How long an unacknowledged payload waits before it is sent again.
    pub(crate) fn retx_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.retx_threshold_ms))
    }

    /// The smoothed RTT; `None` before the first sample.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_millis(u64::from(self.last_rtt_ms)))
    }

    /// The current retransmit multiplier.
    pub(crate) fn retx_scale(&self) -> f64 {
        self.retx_scale
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_sets_estimate_then_averages_and_caps() {
        let opts = Options::default();
        let mut r = RttEstimator::new(&opts);
        assert_eq!(r.retx_timeout(), Duration::from_millis(200));
        assert_eq!(r.rtt(), None);

        r.on_sample(1000, 1040, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(40)));
        assert_eq!(r.retx_timeout(), Duration::from_millis(60));

        r.on_sample(1000, 1020, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(30)));

        // A spike of 10 s is capped at 4 * 30 = 120 before averaging: (120 + 30) / 2 = 75.
        r.on_sample(1000, 11000, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(75)));

        // No echo, no sample.
        r.on_sample(0, 5000, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(75)));
    }

    #[test]
    fn wrapping_clock_and_retx_cap() {
        let opts = Options {
            max_rtt_scale: 0,
            ..Options::default()
        };
        let mut r = RttEstimator::new(&opts);
        // Stamp just before the wrap, acknowledged just after it.
        r.on_sample(65530, 10, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(16)));
        r.on_sample(1, 30001, &opts);
        // (30000 + 16) / 2 = 15008 ms, * 1.5 = 22.5 s, capped at 10 s.
        assert_eq!(r.retx_timeout(), Duration::from_secs(10));
        // An echo 10 ms in our future (a router clock ahead of ours) is no sample.
        r.on_sample(1000, 990, &opts);
        assert_eq!(r.rtt(), Some(Duration::from_millis(15008)));
    }

    #[test]
    fn scale_feedback() {
        let opts = Options::default();
        let mut r = RttEstimator::new(&opts);
        r.on_duplicate_acks();
        assert!((r.retx_scale() - 1.7).abs() < 1e-9);
        r.on_sample(100, 200, &opts);
        assert_eq!(r.retx_timeout(), Duration::from_millis(170));
        for _ in 0..50 {
            r.on_good_acks(&opts);
        }
        assert!((r.retx_scale() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn clock_is_unix_millis_and_never_stamps_zero() {
        let t0 = Instant::now();
        // 1_700_000_000_000 ms = 0x18B_CFE5_6800: low 16 bits 0x6800.
        let c = RttClock::new(t0, 1_700_000_000_000);
        assert_eq!(c.stamp(t0), 0x6800);
        assert_eq!(c.stamp(t0 + Duration::from_millis(7)), 0x6807);
        assert_eq!(
            c.stamp(t0 + Duration::from_millis(0x9800)),
            1,
            "0 wraps to 1"
        );
        assert_eq!(c.stamp(t0 + Duration::from_millis(0x9801)), 1);
        assert_eq!(
            RttClock::new(t0, u64::MAX).stamp(t0 + Duration::from_millis(2)),
            1
        );
    }
}
