//! dyno's inference engine.
//!
//! A request's path: [`engine::Engine::add_request`] → [`scheduler`] picks the
//! batch for a step (continuous batching, chunked prefill, preemption) using
//! the [`block_manager`] for KV blocks → the [`backend`] runs the model's
//! forward pass over the paged KV cache and samples → the engine appends the
//! token with a monotonic timestamp and finishes sequences. [`bench`] replays a
//! requests file through that loop and writes records and a step log.
//! [`spec_decode`] adds n-gram speculative decoding: drafts verified in the
//! step's one forward pass.

pub mod backend;
pub mod bench;
pub mod block_manager;
pub mod config;
pub mod engine;
pub mod engine_config;
pub mod gguf;
pub mod prefix_cache;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
#[cfg(feature = "serve")]
pub mod serve;
pub mod spec_decode;
pub mod synth;
pub mod testing;
#[cfg(feature = "text")]
pub mod tokenizer;
pub mod weights;
