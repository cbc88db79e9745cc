//! KV block bookkeeping: which of the `num_blocks` blocks of `block_size`
//! tokens are free. The backend owns the memory behind the ids; a sequence
//! owns its block table (the ids covering its positions in order).
//!
//! With prefix caching (`enable_prefix_caching`), full computed blocks are
//! also named by their token chain ([`crate::prefix_cache`]): a block may be
//! in several tables at once (reference counted), and a block no table
//! references keeps its content, reusable by the next request with the same
//! prefix, until the pool needs it (least recently freed first). Blocks
//! that never held cached content are handed out before any cached one is
//! evicted.

use crate::prefix_cache::{BlockHash, PrefixCache};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out of KV blocks: need {needed}, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    /// Unreferenced blocks holding no cached content; popped from the end
    /// so recently freed blocks are reused first.
    free: Vec<u32>,
    /// `ref_count[id]`: the block tables holding block `id` (0 = free or
    /// evictable). Guards against double frees and foreign ids.
    ref_count: Vec<u32>,
    /// `Some` with prefix caching on.
    cache: Option<PrefixCache>,
}

impl BlockManager {
    /// A pool without prefix caching.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        BlockManager {
            block_size,
            free: (0..num_blocks as u32).rev().collect(),
            ref_count: vec![0; num_blocks],
            cache: None,
        }
    }

    /// Turns automatic prefix caching on or off (before any allocation).
    pub fn with_prefix_caching(mut self, enabled: bool) -> Self {
        debug_assert_eq!(self.blocks_in_use(), 0, "set before use");
        self.cache = enabled.then(PrefixCache::new);
        self
    }

    pub fn prefix_caching(&self) -> bool {
        self.cache.is_some()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks available for new tokens: free ones and evictable cached ones.
    pub fn num_free(&self) -> usize {
        self.free.len() + self.cache.as_ref().map_or(0, PrefixCache::num_evictable)
    }

    /// Blocks some block table references.
    pub fn blocks_in_use(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Blocks holding cached content, referenced or not (0 without caching).
    pub fn num_cached(&self) -> usize {
        self.cache.as_ref().map_or(0, PrefixCache::num_cached)
    }

    /// How many tables reference block `id`.
    pub fn ref_count(&self, id: u32) -> u32 {
        self.ref_count[id as usize]
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Extra blocks `table` needs to cover `num_tokens` tokens.
    pub fn extra_blocks(&self, table: &[u32], num_tokens: usize) -> usize {
        self.blocks_for(num_tokens).saturating_sub(table.len())
    }

    /// Whether `table` can grow to cover `num_tokens` tokens.
    pub fn can_allocate(&self, table: &[u32], num_tokens: usize) -> bool {
        self.extra_blocks(table, num_tokens) <= self.num_free()
    }

    /// Grows `table` to cover `num_tokens` tokens; all or nothing.
    pub fn allocate(&mut self, table: &mut Vec<u32>, num_tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.extra_blocks(table, num_tokens);
        if needed > self.num_free() {
            return Err(OutOfBlocks {
                needed,
                free: self.num_free(),
            });
        }
        for _ in 0..needed {
            let id = self.take_free().expect("checked above");
            table.push(id);
        }
        Ok(())
    }

    /// A block for new tokens: a plain free one, else the least recently
    /// freed cached one (which forgets its content).
    fn take_free(&mut self) -> Option<u32> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => self.cache.as_mut()?.evict_lru()?,
        };
        debug_assert_eq!(
            self.ref_count[id as usize], 0,
            "block {id} handed out twice"
        );
        self.ref_count[id as usize] = 1;
        Some(id)
    }

    /// The longest run of cached blocks holding the chain `hashes` from its
    /// start (empty without caching). Nothing is taken: see
    /// [`Self::allocate_with_prefix`].
    pub fn cached_prefix(&self, hashes: &[BlockHash]) -> Vec<u32> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        hashes.iter().map_while(|h| cache.lookup(h)).collect()
    }

    /// Starts an empty `table` with the cached blocks `cached` (from
    /// [`Self::cached_prefix`], before anything else changed the pool) and
    /// grows it to cover `num_tokens` tokens; all or nothing.
    pub fn allocate_with_prefix(
        &mut self,
        table: &mut Vec<u32>,
        cached: &[u32],
        num_tokens: usize,
    ) -> Result<(), OutOfBlocks> {
        debug_assert!(table.is_empty());
        // Cached blocks nobody references come out of the free count.
        let revived = cached
            .iter()
            .filter(|&&id| self.ref_count[id as usize] == 0)
            .count();
        let needed = self.blocks_for(num_tokens).saturating_sub(cached.len()) + revived;
        if needed > self.num_free() {
            return Err(OutOfBlocks {
                needed,
                free: self.num_free(),
            });
        }
        let cache = self.cache.as_mut();
        debug_assert!(cached.is_empty() || cache.is_some());
        if let Some(cache) = cache {
            for &id in cached {
                debug_assert!(cache.is_cached(id), "block {id} is not cached");
                if self.ref_count[id as usize] == 0 {
                    cache.reclaim(id);
                }
                self.ref_count[id as usize] += 1;
                table.push(id);
            }
        }
        self.allocate(table, num_tokens)
    }

    /// Records that block `id` now holds the full, computed chain `hash`,
    /// so later requests may reuse it (no-op without caching).
    pub fn cache_block(&mut self, id: u32, hash: BlockHash) {
        debug_assert!(self.ref_count[id as usize] > 0, "caching a free block");
        if let Some(cache) = &mut self.cache {
            cache.insert(id, hash);
        }
    }

    /// Drops `table`'s reference to each of its blocks and empties it. A
    /// block no table references any more is free again, or, when it holds
    /// cached content, evictable. The table is released from its end, so
    /// the tail of a chain is evicted before its head (a head's loss would
    /// make the rest unreachable anyway).
    pub fn free(&mut self, table: &mut Vec<u32>) {
        for id in table.drain(..).rev() {
            let count = &mut self.ref_count[id as usize];
            debug_assert!(*count > 0, "block {id} freed twice or never allocated");
            *count -= 1;
            if *count > 0 {
                continue;
            }
            match &mut self.cache {
                Some(cache) if cache.is_cached(id) => cache.release(id),
                _ => self.free.push(id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_grows_by_whole_blocks_and_free_returns_them() {
        let mut bm = BlockManager::new(4, 16);
        let mut t = Vec::new();
        bm.allocate(&mut t, 1).unwrap();
        assert_eq!(t.len(), 1);
        bm.allocate(&mut t, 16).unwrap();
        assert_eq!(t.len(), 1);
        bm.allocate(&mut t, 17).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(bm.blocks_in_use(), 2);
        bm.free(&mut t);
        assert!(t.is_empty());
        assert_eq!(bm.blocks_in_use(), 0);
        assert_eq!(bm.num_free(), 4);
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut bm = BlockManager::new(3, 4);
        let mut a = Vec::new();
        bm.allocate(&mut a, 8).unwrap();
        let mut b = Vec::new();
        assert!(!bm.can_allocate(&b, 9));
        assert_eq!(
            bm.allocate(&mut b, 9),
            Err(OutOfBlocks { needed: 3, free: 1 })
        );
        assert!(b.is_empty());
        assert_eq!(bm.num_free(), 1);
        assert!(bm.can_allocate(&b, 4));
    }

    #[test]
    fn ids_are_distinct_across_tables() {
        let mut bm = BlockManager::new(8, 2);
        let mut tables = vec![Vec::new(), Vec::new(), Vec::new()];
        for (i, t) in tables.iter_mut().enumerate() {
            bm.allocate(t, 2 * (i + 1)).unwrap();
        }
        let mut all: Vec<u32> = tables.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
        for t in &mut tables {
            bm.free(t);
        }
        assert_eq!(bm.blocks_in_use(), 0);
    }

    fn chain(tokens: &[u32], bs: usize) -> Vec<BlockHash> {
        let mut h = Vec::new();
        crate::prefix_cache::extend_chain(&mut h, tokens, bs, tokens.len() / bs);
        h
    }

    #[test]
    fn without_caching_nothing_is_found_or_kept() {
        let mut bm = BlockManager::new(4, 2);
        let mut t = Vec::new();
        bm.allocate(&mut t, 4).unwrap();
        let h = chain(&[1, 2, 3, 4], 2);
        bm.cache_block(t[0], h[0]);
        bm.free(&mut t);
        assert!(bm.cached_prefix(&h).is_empty());
        assert_eq!(bm.num_cached(), 0);
        assert_eq!(bm.num_free(), 4);
    }

    #[test]
    fn shared_blocks_are_reference_counted_and_stay_cached_after_free() {
        let mut bm = BlockManager::new(6, 2).with_prefix_caching(true);
        let tokens = [1, 2, 3, 4, 5];
        let h = chain(&tokens, 2);
        let mut a = Vec::new();
        bm.allocate(&mut a, 5).unwrap();
        bm.cache_block(a[0], h[0]);
        bm.cache_block(a[1], h[1]);
        assert_eq!(bm.cached_prefix(&h), a[..2].to_vec());

        // A second table reuses both full blocks and gets one of its own.
        let hits = bm.cached_prefix(&h);
        let mut b = Vec::new();
        bm.allocate_with_prefix(&mut b, &hits, 5).unwrap();
        assert_eq!(b[..2], a[..2]);
        assert_ne!(b[2], a[2]);
        assert_eq!(bm.ref_count(a[0]), 2);
        assert_eq!(bm.blocks_in_use(), 4);

        bm.free(&mut a);
        assert_eq!(bm.ref_count(b[0]), 1);
        assert_eq!(bm.blocks_in_use(), 3);
        bm.free(&mut b);
        assert_eq!(bm.blocks_in_use(), 0);
        assert_eq!(bm.num_free(), 6, "evictable blocks count as free");
        assert_eq!(bm.num_cached(), 2, "content survives the free");
        assert_eq!(bm.cached_prefix(&h).len(), 2);

        // Reviving unreferenced cached blocks takes them out of the pool.
        let hits = bm.cached_prefix(&h);
        let mut c = Vec::new();
        bm.allocate_with_prefix(&mut c, &hits, 4).unwrap();
        assert_eq!(c, hits);
        assert_eq!(bm.num_free(), 4);
        bm.free(&mut c);
    }

    #[test]
    fn plain_blocks_go_first_then_the_least_recently_freed_cached_ones() {
        let mut bm = BlockManager::new(4, 1).with_prefix_caching(true);
        let mut a = Vec::new();
        bm.allocate(&mut a, 2).unwrap();
        let mut b = Vec::new();
        bm.allocate(&mut b, 1).unwrap();
        let (ha, hb) = (chain(&[10, 11], 1), chain(&[20], 1));
        bm.cache_block(a[0], ha[0]);
        bm.cache_block(a[1], ha[1]);
        bm.cache_block(b[0], hb[0]);
        let (a0, a1, b0) = (a[0], a[1], b[0]);
        bm.free(&mut a); // tail first: a1 is older than a0
        bm.free(&mut b);
        let mut t = Vec::new();
        bm.allocate(&mut t, 1).unwrap();
        assert_eq!(bm.num_cached(), 3, "the never-cached block went first");
        bm.allocate(&mut t, 2).unwrap();
        assert_eq!(t[1], a1, "the chain's tail is evicted first");
        assert_eq!(bm.cached_prefix(&ha), vec![a0]);
        bm.allocate(&mut t, 3).unwrap();
        assert_eq!(t[2], a0);
        assert_eq!(bm.cached_prefix(&hb), vec![b0], "freed last, evicted last");
        assert!(bm.allocate(&mut t, 5).is_err());
        assert_eq!(t.len(), 3, "all or nothing");
        bm.allocate(&mut t, 4).unwrap();
        assert_eq!(bm.num_cached(), 0);
        bm.free(&mut t);
        assert_eq!(bm.num_free(), 4);
    }

    #[test]
    fn allocation_with_a_prefix_is_all_or_nothing() {
        let mut bm = BlockManager::new(3, 2).with_prefix_caching(true);
        let h = chain(&[1, 2, 3, 4], 2);
        let mut a = Vec::new();
        bm.allocate(&mut a, 4).unwrap();
        bm.cache_block(a[0], h[0]);
        bm.cache_block(a[1], h[1]);
        bm.free(&mut a);
        let hits = bm.cached_prefix(&h);
        // 2 revived + 2 new > 3 blocks.
        let mut b = Vec::new();
        let err = bm.allocate_with_prefix(&mut b, &hits, 8).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 4, free: 3 });
        assert!(b.is_empty());
        assert_eq!(bm.num_free(), 3);
        assert_eq!(bm.cached_prefix(&h), hits, "nothing was evicted");
        bm.allocate_with_prefix(&mut b, &hits, 6).unwrap();
        assert_eq!(b.len(), 3);
        bm.free(&mut b);
    }
}
