//! A bitset in front of a hash map: most keys the hot path asks about are in
//! none of the small maps (restrictions, the write overlay), and one bit test
//! in a table that stays in cache is cheaper than a hash lookup that misses.

/// About 16 bits per key: one in twenty keys that are absent still takes the
/// map lookup. An empty filter answers "no" to everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    words: Box<[u64]>,
    shift: u32,
}

impl Filter {
    /// A filter holding `keys`; `n` is how many there are (a hint for sizing).
    pub(crate) fn new(n: usize, keys: impl IntoIterator<Item = u64>) -> Filter {
        if n == 0 {
            return Filter::default();
        }
        let bits = (n * 16).next_power_of_two().max(1024);
        let mut f = Filter {
            words: vec![0u64; bits / 64].into_boxed_slice(),
            shift: 64 - bits.trailing_zeros(),
        };
        for k in keys {
            let b = f.bit(k);
            f.words[b / 64] |= 1 << (b % 64);
        }
        f
    }

    /// Fibonacci hashing onto the filter's bits.
    #[inline]
    fn bit(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Whether `key` may be present; `false` means it certainly is not.
    #[inline]
    pub(crate) fn may_contain(&self, key: u64) -> bool {
        if self.words.is_empty() {
            return false;
        }
        let b = self.bit(key);
        self.words[b / 64] & (1 << (b % 64)) != 0
    }

    /// Bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_key_and_rejects_most_others() {
        let keys: Vec<u64> = (0..1000u64).map(|i| 200_000_000_000 + i * 7919).collect();
        let f = Filter::new(keys.len(), keys.iter().copied());
        assert!(keys.iter().all(|k| f.may_contain(*k)));
        let false_hits = (0..10_000u64)
            .map(|i| 190_000_000_000 + i * 104_729)
            .filter(|k| f.may_contain(*k))
            .count();
        assert!(false_hits < 1_000, "{false_hits} false hits in 10,000");
        assert!(!Filter::default().may_contain(keys[0]));
    }
}
