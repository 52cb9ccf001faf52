//! Which blocks of a file's base content were rewritten into the IRCache.

use std::collections::{BTreeMap, BTreeSet};

/// Copy-on-write granularity: PostgreSQL's page size. PostgreSQL reads and writes relation files
/// in whole 8 KiB pages, so a page write never needs the old bytes of its block (no
/// read-before-write) and the cache holds exactly the pages that changed.
pub const BLOCK_SIZE: u64 = 8192;

/// Blocks per persisted group: 4096 blocks (32 MiB of file) in a 512-byte bitmap, so an fsync
/// rewrites only the groups it touched.
pub const GROUP_BLOCKS: u64 = 4096;
const WORDS: usize = (GROUP_BLOCKS / 64) as usize;
pub const GROUP_BYTES: usize = WORDS * 8;

type Group = Box<[u64; WORDS]>;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct BlockMap {
    groups: BTreeMap<u64, Group>,
    /// Groups changed since the last `take_unsynced`.
    unsynced: BTreeSet<u64>,
}

impl BlockMap {
    pub fn is_dirty(&self, block: u64) -> bool {
        let (g, w, bit) = split(block);
        self.groups.get(&g).is_some_and(|words| words[w] & bit != 0)
    }

    pub fn mark(&mut self, block: u64) {
        let (g, w, bit) = split(block);
        let words = self.groups.entry(g).or_insert_with(|| Box::new([0; WORDS]));
        if words[w] & bit == 0 {
            words[w] |= bit;
            self.unsynced.insert(g);
        }
    }

    pub fn mark_range(&mut self, first: u64, last_inclusive: u64) {
        for b in first..=last_inclusive {
            self.mark(b);
        }
    }

    /// Forgets every block from `first` on (the file was truncated).
    pub fn clear_from(&mut self, first: u64) {
        let changed: Vec<u64> = self
            .groups
            .range(first / GROUP_BLOCKS..)
            .map(|(g, _)| *g)
            .collect();
        for g in changed {
            let start = g * GROUP_BLOCKS;
            if start >= first {
                self.groups.remove(&g);
            } else if let Some(words) = self.groups.get_mut(&g) {
                for b in first - start..GROUP_BLOCKS {
                    words[(b / 64) as usize] &= !(1u64 << (b % 64));
                }
            }
            self.unsynced.insert(g);
        }
    }

    #[cfg(test)]
    pub fn dirty_count(&self) -> u64 {
        self.groups
            .values()
            .map(|w| w.iter().map(|x| x.count_ones() as u64).sum::<u64>())
            .sum()
    }

    /// Groups changed since the last call, as their persisted form (`None`: group now empty).
    pub fn take_unsynced(&mut self) -> Vec<(u64, Option<Vec<u8>>)> {
        std::mem::take(&mut self.unsynced)
            .into_iter()
            .map(|g| {
                let bytes = self
                    .groups
                    .get(&g)
                    .filter(|w| w.iter().any(|x| *x != 0))
                    .map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect());
                (g, bytes)
            })
            .collect()
    }

    /// Puts groups back on the to-persist list after a failed commit.
    pub fn restore_unsynced(&mut self, groups: impl IntoIterator<Item = u64>) {
        self.unsynced.extend(groups);
    }

    /// Loads a persisted group; ignores malformed lengths rather than guessing.
    pub fn load_group(&mut self, group: u64, bytes: &[u8]) -> bool {
        if bytes.len() != GROUP_BYTES {
            return false;
        }
        let mut words = Box::new([0u64; WORDS]);
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            words[i] = u64::from_le_bytes(w.try_into().expect("8-byte chunk"));
        }
        self.groups.insert(group, words);
        true
    }
}

fn split(block: u64) -> (u64, usize, u64) {
    let g = block / GROUP_BLOCKS;
    let b = block % GROUP_BLOCKS;
    (g, (b / 64) as usize, 1u64 << (b % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_and_query() {
        let mut m = BlockMap::default();
        assert!(!m.is_dirty(0));
        m.mark(0);
        m.mark(4095);
        m.mark(4096);
        m.mark(1_000_000);
        assert!(m.is_dirty(0) && m.is_dirty(4095) && m.is_dirty(4096) && m.is_dirty(1_000_000));
        assert!(!m.is_dirty(1) && !m.is_dirty(4097));
        assert_eq!(m.dirty_count(), 4);
    }

    #[test]
    fn unsynced_groups_round_trip() {
        let mut m = BlockMap::default();
        m.mark_range(10, 5000);
        let groups = m.take_unsynced();
        assert_eq!(groups.len(), 2);
        assert!(m.take_unsynced().is_empty());
        m.mark(20); // already dirty: nothing new to persist
        assert!(m.take_unsynced().is_empty());

        let mut loaded = BlockMap::default();
        for (g, bytes) in &groups {
            assert!(loaded.load_group(*g, bytes.as_ref().unwrap()));
        }
        assert_eq!(loaded.dirty_count(), m.dirty_count());
        assert!(loaded.is_dirty(10) && loaded.is_dirty(5000) && !loaded.is_dirty(9));
    }

    #[test]
    fn clear_from_middle_of_group() {
        let mut m = BlockMap::default();
        m.mark_range(0, 9000);
        m.take_unsynced();
        m.clear_from(100);
        assert!(m.is_dirty(99) && !m.is_dirty(100) && !m.is_dirty(9000));
        assert_eq!(m.dirty_count(), 100);
        let groups = m.take_unsynced();
        // group 0 shrinks, groups 1 and 2 become empty
        assert_eq!(groups.len(), 3);
        assert!(groups[0].1.is_some());
        assert!(groups[1].1.is_none() && groups[2].1.is_none());
    }

    #[test]
    fn clear_from_zero_empties_everything() {
        let mut m = BlockMap::default();
        m.mark_range(0, 100);
        m.clear_from(0);
        assert_eq!(m.dirty_count(), 0);
        assert!(m.take_unsynced().iter().all(|(_, b)| b.is_none()));
    }

    #[test]
    fn malformed_group_is_refused() {
        let mut m = BlockMap::default();
        assert!(!m.load_group(0, &[0u8; 3]));
    }
}
