//! The paged KV cache: one allocation made once, `[layer][K | V]` arrays
//! of bf16 whose rows the kernels place by `kernels::KvLayout` (`kv_row`
//! in common.cuh): `[slot][kv_head][head_dim]` by default, where a slot is
//! `block * block_size + offset`, or `[block][kv_head][offset][head_dim]`.
//! Either way a layer's array is `(num_blocks + 1) * block_size` rows of
//! every head. One extra block at the end is the trash block that padded
//! graph entries write into; the scheduler never sees it.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::super::BackendError;
use super::buffer::DeviceBuffer;

pub struct KvPool {
    buffer: DeviceBuffer,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Elements of one layer's K (or V).
    layer_elems: usize,
}

/// Bytes one block takes over all layers, K and V, in bf16.
pub fn block_bytes(layers: usize, kv_heads: usize, head_dim: usize, block_size: usize) -> usize {
    2 * layers * kv_heads * head_dim * block_size * 2
}

impl KvPool {
    pub fn allocate(
        stream: &Arc<CudaStream>,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, BackendError> {
        let slots = (num_blocks + 1) * block_size;
        let layer_elems = slots * kv_heads * head_dim;
        let bytes = 2 * layers * layer_elems * 2;
        let buffer = DeviceBuffer::zeroed(stream, bytes, "KV cache")?;
        Ok(KvPool {
            buffer,
            num_blocks,
            block_size,
            layer_elems,
        })
    }

    pub fn trash_block(&self) -> u32 {
        self.num_blocks as u32
    }

    pub fn k(&self, layer: usize) -> u64 {
        self.buffer.at::<u16>(2 * layer * self.layer_elems)
    }

    pub fn v(&self, layer: usize) -> u64 {
        self.buffer.at::<u16>((2 * layer + 1) * self.layer_elems)
    }

    pub fn bytes(&self) -> usize {
        self.buffer.bytes
    }
}
