//! Automatic prefix caching (vLLM's, block by block): which full KV blocks
//! hold which token chain, and which unreferenced ones may be evicted.
//!
//! A full block is named by the hash of its *chain*: the hash of the block
//! before it and its own `block_size` token ids. Two sequences whose first
//! `k` blocks hold the same tokens therefore compute the same `k` hashes,
//! and the second can reuse the first's K/V instead of recomputing it: the
//! K/V of a token depends only on the tokens at and before its position.
//! Only *computed* full blocks are registered (after the step that wrote
//! them), so a cached block is never written again: a sequence writes only
//! positions at or past its `num_computed`, which start past its cached
//! blocks.
//!
//! The [`crate::block_manager::BlockManager`] keeps the reference counts;
//! this map holds, for every block with cached content, its hash, and for
//! those no sequence references, their least-recently-freed order.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

/// blake3 of a block's token chain.
pub type BlockHash = [u8; 32];

/// The hash of a full block holding `tokens`, after the block `parent`
/// (`None` for a sequence's first block).
pub fn block_hash(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = blake3::Hasher::new();
    // A domain byte keeps a first block apart from any block with a parent.
    match parent {
        Some(p) => {
            h.update(&[1]);
            h.update(p);
        }
        None => {
            h.update(&[0]);
        }
    }
    // One update of the whole block (the same bytes as one per token, so
    // the same hash, at a fraction of the calls).
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    h.update(&bytes);
    *h.finalize().as_bytes()
}

/// Extends `hashes` (the chain hashes of the first `hashes.len()` full
/// blocks of `tokens`) to cover the first `blocks` full blocks.
pub fn extend_chain(hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize, blocks: usize) {
    debug_assert!(blocks * block_size <= tokens.len(), "only full blocks");
    while hashes.len() < blocks {
        let i = hashes.len();
        let h = block_hash(hashes.last(), &tokens[i * block_size..(i + 1) * block_size]);
        hashes.push(h);
    }
}

/// Cached blocks: hash ↔ block id, and the LRU order of the unreferenced.
#[derive(Debug, Default)]
pub struct PrefixCache {
    by_hash: FxHashMap<BlockHash, u32>,
    /// The chain hash each cached block holds (sparse: memory grows with
    /// the cached blocks, not the pool).
    hash_of: FxHashMap<u32, BlockHash>,
    /// Cached blocks no sequence references, by the time they were freed
    /// (oldest first): the eviction order.
    evictable: BTreeMap<u64, u32>,
    /// Each evictable block's key in `evictable`.
    freed_at: FxHashMap<u32, u64>,
    clock: u64,
}

impl PrefixCache {
    pub fn new() -> Self {
        PrefixCache::default()
    }

    /// Blocks with cached content (referenced or not).
    pub fn num_cached(&self) -> usize {
        self.by_hash.len()
    }

    /// Cached blocks no sequence references.
    pub fn num_evictable(&self) -> usize {
        self.evictable.len()
    }

    pub fn is_cached(&self, id: u32) -> bool {
        self.hash_of.contains_key(&id)
    }

    pub fn lookup(&self, hash: &BlockHash) -> Option<u32> {
        self.by_hash.get(hash).copied()
    }

    /// Records that block `id` holds the chain `hash`. When another block
    /// already holds it (two sequences computed the same block in one
    /// step), the first stays the cached one and `id` stays plain.
    pub fn insert(&mut self, id: u32, hash: BlockHash) {
        if self.hash_of.contains_key(&id) || self.by_hash.contains_key(&hash) {
            return;
        }
        self.by_hash.insert(hash, id);
        self.hash_of.insert(id, hash);
    }

    /// A cached block lost its last reference: it becomes the most recently
    /// freed evictable block.
    pub fn release(&mut self, id: u32) {
        debug_assert!(self.is_cached(id));
        self.clock += 1;
        self.evictable.insert(self.clock, id);
        self.freed_at.insert(id, self.clock);
    }

    /// An evictable block is referenced again: it leaves the LRU.
    pub fn reclaim(&mut self, id: u32) {
        if let Some(at) = self.freed_at.remove(&id) {
            self.evictable.remove(&at);
        }
    }

    /// Evicts the least recently freed unreferenced block: it forgets its
    /// content and hands it out for new tokens.
    pub fn evict_lru(&mut self) -> Option<u32> {
        let (_, id) = self.evictable.pop_first()?;
        self.freed_at.remove(&id);
        if let Some(hash) = self.hash_of.remove(&id) {
            self.by_hash.remove(&hash);
        }
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hashes_depend_on_every_earlier_token() {
        let a: Vec<u32> = (0..12).collect();
        let mut b = a.clone();
        b[1] = 99;
        let (mut ha, mut hb) = (Vec::new(), Vec::new());
        extend_chain(&mut ha, &a, 4, 3);
        extend_chain(&mut hb, &b, 4, 3);
        assert_eq!(ha.len(), 3);
        // Block 2 holds the same tokens in both, but its chain differs.
        assert_eq!(a[8..12], b[8..12]);
        assert!(ha.iter().zip(&hb).all(|(x, y)| x != y));
        // Same tokens at a different block index differ too.
        let c: Vec<u32> = [0, 1, 2, 3, 0, 1, 2, 3].to_vec();
        let mut hc = Vec::new();
        extend_chain(&mut hc, &c, 4, 2);
        assert_ne!(hc[0], hc[1]);
        // Extending is incremental and deterministic.
        let mut again = ha[..1].to_vec();
        extend_chain(&mut again, &a, 4, 3);
        assert_eq!(again, ha);
    }

    #[test]
    fn a_block_hash_is_blake3_of_the_domain_byte_parent_and_little_endian_tokens() {
        let tokens = [1u32, 0x0102_0304, u32::MAX, 7];
        let mut bytes = vec![0u8];
        bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        let first = block_hash(None, &tokens);
        assert_eq!(first, *blake3::hash(&bytes).as_bytes());
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&first);
        bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        assert_eq!(
            block_hash(Some(&first), &tokens),
            *blake3::hash(&bytes).as_bytes()
        );
    }

    #[test]
    fn eviction_is_least_recently_freed_first_and_forgets_the_hash() {
        let mut c = PrefixCache::new();
        for id in 0..3u32 {
            c.insert(id, block_hash(None, &[id]));
        }
        c.release(2);
        c.release(0);
        c.release(1);
        c.reclaim(0); // referenced again: not evictable
        assert_eq!(c.num_evictable(), 2);
        assert_eq!(c.evict_lru(), Some(2));
        assert_eq!(c.lookup(&block_hash(None, &[2])), None);
        assert_eq!(c.lookup(&block_hash(None, &[0])), Some(0));
        assert_eq!(c.evict_lru(), Some(1));
        assert_eq!(c.evict_lru(), None);
        assert_eq!(c.num_cached(), 1);
    }

    #[test]
    fn a_hash_already_held_stays_with_its_first_block() {
        let mut c = PrefixCache::new();
        let h = block_hash(None, &[7]);
        c.insert(0, h);
        c.insert(1, h);
        assert_eq!(c.lookup(&h), Some(0));
        assert!(!c.is_cached(1));
    }
}
