//! A map bounded in size that forgets its oldest entries first, each
//! insertion and eviction O(1) amortized.
//!
//! The master keeps half-open handshakes (answered, waiting for the peer's
//! Auth) in one: anyone can open them, so they are bounded, and finding
//! the oldest by a scan of the whole map on every hello (as before) cost a
//! 10,000-minion fleet connecting at once more than the handshakes did.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(crate) struct OldestFirst<K, V> {
    /// Each entry with the number of its insertion.
    map: HashMap<K, (V, u64)>,
    /// Keys in insertion order; an entry removed or inserted again since
    /// leaves a stale one here, skipped (and compacted away) later.
    order: VecDeque<(u64, K)>,
    next: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> OldestFirst<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            cap: cap.max(1),
        }
    }

    /// Inserts `v` under `k`, first forgetting the oldest entry if the map
    /// is full.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            self.evict_oldest();
        }
        let n = self.next;
        self.next += 1;
        self.map.insert(k.clone(), (v, n));
        self.order.push_back((n, k));
        // Stale keys are at most as many as live ones before this runs.
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order
                .retain(|(n, k)| map.get(k).is_some_and(|(_, m)| m == n));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((n, k)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|(_, m)| *m == n) {
                self.map.remove(&k);
                return;
            }
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    pub(crate) fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::OldestFirst;

    #[test]
    fn the_oldest_goes_first_and_removed_entries_are_not_counted() {
        let mut m = OldestFirst::new(3);
        for k in 0..3 {
            m.insert(k, k);
        }
        m.remove(&1);
        m.insert(3, 3); // room: 1 was removed
        assert_eq!(m.len(), 3);
        m.insert(4, 4); // full: 0, the oldest, goes
        assert!(!m.contains_key(&0));
        assert!([2, 3, 4].iter().all(|k| m.contains_key(k)));
        m.insert(2, 22); // again: now the newest
        m.insert(5, 5); // 3 is the oldest now
        assert!(!m.contains_key(&3));
        assert_eq!(m.get(&2), Some(&22));
    }

    #[test]
    fn stale_order_entries_stay_bounded() {
        let mut m = OldestFirst::new(4);
        for k in 0..10_000u32 {
            m.insert(k % 2, k);
            m.remove(&(k % 2));
        }
        assert!(m.order.len() <= 8, "{}", m.order.len());
    }

    /// A full map of 100,000 takes another 100,000 in well under a second
    /// in a debug build; a scan for the oldest on each insert (the old
    /// way) made that 10^10 steps.
    #[test]
    fn inserting_into_a_full_map_does_not_scan_it() {
        let mut m = OldestFirst::new(100_000);
        for k in 0..200_000u64 {
            m.insert(k, ());
        }
        assert_eq!(m.len(), 100_000);
        assert!(!m.contains_key(&99_999) && m.contains_key(&100_000));
    }
}
