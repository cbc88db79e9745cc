//! Decode steps replayed as CUDA graphs, one per batch-size bucket
//! (1, 2, 4, …, 256, then every 32 up to `max_num_seqs`). A batch of n
//! decode tokens runs the graph of the smallest bucket ≥ n, padded with
//! entries that write into the KV pool's trash block. Captured on the backend's non-default stream after
//! one eager warm-up run of the same shape (cuBLAS picks its kernels and the
//! driver loads them outside the capture).

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph, CudaStream};

use super::super::BackendError;

/// Where the buckets stop doubling, and their spacing past it. Below it a
/// decode step reads the weights whatever its rows, so padding is nearly
/// free; past it the products are bound by their rows, and a padded row
/// costs what a real one does: on the H200, qwen3-0.6b's offline run sits
/// at ~856 sequences, and its graph of 1,024 rows took 10.91 ms a step
/// against 10.35 ms for the same step run eagerly at 856 (docs/BENCHMARKS.md).
/// Every 32 keeps the padding under 12.5 % past 256 rows (under 4 % from
/// 800), at one graph per bucket (24 more at 1,024 sequences).
const DOUBLING_UP_TO: usize = 256;
const STEP_PAST_DOUBLING: usize = 32;

/// Batch-size buckets: powers of two up to `DOUBLING_UP_TO`, then every
/// `STEP_PAST_DOUBLING`, below `max_seqs`; then `max_seqs`.
pub fn buckets(max_seqs: usize) -> Vec<usize> {
    let mut b = Vec::new();
    let mut n = 1usize;
    while n < max_seqs {
        b.push(n);
        n = if n < DOUBLING_UP_TO {
            n * 2
        } else {
            n + STEP_PAST_DOUBLING
        };
    }
    b.push(max_seqs.max(1));
    b
}

pub struct CapturedGraph {
    pub graph: CudaGraph,
    /// Kernel and memcpy nodes in the graph (its launches per replay).
    pub nodes: u64,
}

#[derive(Default)]
pub struct DecodeGraphs {
    graphs: BTreeMap<usize, CapturedGraph>,
}

impl DecodeGraphs {
    /// The smallest captured bucket that holds `n` sequences.
    pub fn bucket_for(&self, n: usize) -> Option<usize> {
        self.graphs.range(n..).next().map(|(&b, _)| b)
    }

    pub fn get(&self, bucket: usize) -> Option<&CapturedGraph> {
        self.graphs.get(&bucket)
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn insert(&mut self, bucket: usize, graph: CapturedGraph) {
        self.graphs.insert(bucket, graph);
    }
}

/// Captures what `record` launches on `stream` into a graph.
pub fn capture(
    stream: &Arc<CudaStream>,
    record: impl FnOnce() -> Result<(), BackendError>,
) -> Result<CapturedGraph, BackendError> {
    let err =
        |what: &str, e: cudarc::driver::DriverError| BackendError::Cuda(format!("{what}: {e}"));
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| err("beginning graph capture", e))?;
    let recorded = record();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    recorded?;
    let graph = graph
        .map_err(|e| err("ending graph capture", e))?
        .ok_or_else(|| BackendError::Cuda("graph capture recorded nothing".into()))?;
    let mut nodes = 0usize;
    // SAFETY: a null node array asks only for the count.
    let r = unsafe { sys::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut nodes) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(BackendError::Cuda(format!("cuGraphGetNodes: {r:?}")));
    }
    graph.upload().map_err(|e| err("uploading graph", e))?;
    Ok(CapturedGraph {
        graph,
        nodes: nodes as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_then_every_32_then_the_max() {
        assert_eq!(buckets(0), vec![1]);
        assert_eq!(buckets(1), vec![1]);
        assert_eq!(buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(buckets(100), vec![1, 2, 4, 8, 16, 32, 64, 100]);
        assert_eq!(buckets(256), vec![1, 2, 4, 8, 16, 32, 64, 128, 256]);
        assert_eq!(
            buckets(300),
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 288, 300]
        );
        let big = buckets(1024);
        assert_eq!(big.len(), 9 + 24);
        assert_eq!(&big[9..12], &[288, 320, 352]);
        assert_eq!(big.last(), Some(&1024));
        // qwen3-0.6b's offline batch on the H200: 864 rows, not 1,024.
        assert_eq!(big.iter().find(|&&b| b >= 856), Some(&864));
        // Strictly increasing, so each batch size has one smallest bucket.
        assert!(big.windows(2).all(|w| w[0] < w[1]));
    }
}
