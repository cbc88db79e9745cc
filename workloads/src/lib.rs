//! The contract crate of dyno.
//!
//! Data flows one way: a workload [`spec`] is resolved by the seeded
//! [`generate`] module into a `requests.jsonl` of [`Request`]s; `engine bench`
//! replays them and writes one [`RequestRecord`] per request plus a
//! [`StepLogEntry`] per engine step; the pipeline (xtask) turns those into
//! metrics. The engine and xtask share nothing but these types.

pub mod generate;
pub mod jsonl;
pub mod record;
pub mod request;
pub mod spec;

pub use record::{FinishReason, RecordStatus, RequestRecord, StepLogEntry};
pub use request::{Request, SamplingParams};
