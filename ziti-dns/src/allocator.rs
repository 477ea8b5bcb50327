//! The address-numbering rule both pools share: a range of numbers handed out
//! fresh-first, then released ones oldest-first, so that an address a client may
//! still have cached is reassigned as late as possible.
//!
//! Numbers are `u128` so one allocator serves IPv4 and IPv6; the pools convert.

use std::collections::{HashSet, VecDeque};

/// Hands out the numbers `first ..= first + capacity - 1`.
#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    first: u128,
    capacity: u128,
    /// How many never-used numbers were handed out, counted from `first` (an offset
    /// rather than a next number: the last one may be `u128::MAX`).
    fresh_used: u128,
    /// Released numbers, oldest first.
    free: VecDeque<u128>,
    /// Same contents as `free`, to refuse double releases in O(1).
    free_set: HashSet<u128>,
}

impl Allocator {
    pub(crate) fn new(first: u128, capacity: u128) -> Self {
        Self {
            first,
            capacity,
            fresh_used: 0,
            free: VecDeque::new(),
            free_set: HashSet::new(),
        }
    }

    pub(crate) fn capacity(&self) -> u128 {
        self.capacity
    }

    /// How many numbers are currently held.
    pub(crate) fn in_use(&self) -> u128 {
        self.fresh_used.saturating_sub(self.free.len() as u128)
    }

    /// Whether [`Allocator::allocate`] would return a number.
    pub(crate) fn has_room(&self) -> bool {
        self.fresh_used < self.capacity || !self.free.is_empty()
    }

    /// A never-used number while any is left, else the oldest released one.
    pub(crate) fn allocate(&mut self) -> Option<u128> {
        if self.fresh_used < self.capacity {
            let n = self.first.saturating_add(self.fresh_used);
            self.fresh_used = self.fresh_used.saturating_add(1);
            return Some(n);
        }
        let n = self.free.pop_front()?;
        self.free_set.remove(&n);
        Some(n)
    }

    /// Gives a number back. False (and nothing changes) unless it is currently held.
    pub(crate) fn release(&mut self, n: u128) -> bool {
        let handed_out = n
            .checked_sub(self.first)
            .is_some_and(|offset| offset < self.fresh_used);
        if !handed_out || self.free_set.contains(&n) {
            return false;
        }
        self.free.push_back(n);
        self.free_set.insert(n);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_first_then_oldest_released() {
        let mut a = Allocator::new(10, 3);
        assert_eq!((a.allocate(), a.allocate()), (Some(10), Some(11)));
        assert!(a.release(10));
        assert!(!a.release(10), "double release refused");
        assert!(!a.release(12), "never handed out");
        assert!(!a.release(9), "below the range");
        assert_eq!(a.allocate(), Some(12), "fresh before released");
        assert_eq!(a.in_use(), 2);
        assert_eq!(a.allocate(), Some(10));
        assert!(!a.has_room());
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn top_of_the_number_space() {
        let mut a = Allocator::new(u128::MAX - 1, 2);
        assert_eq!(a.allocate(), Some(u128::MAX - 1));
        assert_eq!(a.allocate(), Some(u128::MAX));
        assert_eq!(a.allocate(), None);
        assert!(a.release(u128::MAX));
        assert_eq!(a.allocate(), Some(u128::MAX));
    }
}
