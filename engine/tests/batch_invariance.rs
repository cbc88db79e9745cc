//! With the real CPU backend on a synthesized `tiny` checkpoint, a request's
//! greedy output does not depend on how it was scheduled: alone, in a batch
//! of 64 mixed-length requests, with chunked prefill on or off, and after
//! being preempted and recomputed (`batch_invariance_support`). The CPU
//! backend is batch-invariant by construction, so `batch_invariant` is a
//! no-op there: both settings must pass and agree. The same check runs on
//! the GPU in `cuda_batch_invariance.rs`.

mod batch_invariance_support;

use std::path::Path;

use batch_invariance_support::check_scheduling_invariance;
use engine::engine_config::{DeviceKind, EngineConfig};
use engine::weights::Checkpoint;

fn tiny(dir: &Path) -> Checkpoint {
    engine::synth::write_preset("tiny", 7, dir).expect("synth tiny");
    Checkpoint::open(dir).expect("open tiny")
}

#[test]
fn greedy_output_is_independent_of_batching_chunking_and_preemption() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny(dir.path());
    let mut outputs = Vec::new();
    for batch_invariant in [false, true] {
        let cfg = EngineConfig {
            device: DeviceKind::Cpu,
            batch_invariant,
            ..EngineConfig::default()
        };
        outputs.push(check_scheduling_invariance(
            &format!("cpu batch_invariant={batch_invariant}"),
            &ckpt,
            &cfg,
        ));
    }
    assert_eq!(outputs[0], outputs[1], "the knob changed CPU outputs");
}
