//! KV block bookkeeping: which of the `num_blocks` blocks of `block_size`
//! tokens are free. The backend owns the memory behind the ids; a sequence
//! owns its block table (the ids covering its positions in order).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out of KV blocks: need {needed}, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    /// Free ids; popped from the end so recently freed blocks are reused first.
    free: Vec<u32>,
    /// `in_use[id]` guards against double frees and foreign ids.
    in_use: Vec<bool>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        BlockManager {
            block_size,
            free: (0..num_blocks as u32).rev().collect(),
            in_use: vec![false; num_blocks],
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.in_use.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn blocks_in_use(&self) -> usize {
        self.num_blocks() - self.num_free()
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
            let id = self.free.pop().expect("checked above");
            debug_assert!(!self.in_use[id as usize], "block {id} handed out twice");
            self.in_use[id as usize] = true;
            table.push(id);
        }
        Ok(())
    }

    /// Returns every block of `table` to the pool and empties it.
    pub fn free(&mut self, table: &mut Vec<u32>) {
        for id in table.drain(..) {
            let slot = &mut self.in_use[id as usize];
            debug_assert!(*slot, "block {id} freed twice or never allocated");
            *slot = false;
            self.free.push(id);
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
}
