//! The contract crate of dyno.
//!
//! Data flows one way: a workload [`spec`] is resolved by the seeded
//! [`generate`] module into a `requests.jsonl` of [`Request`]s; `engine bench`
//! replays them and writes one [`RequestRecord`] per request plus a
//! [`StepLogEntry`] per engine step; the pipeline (xtask) turns those into
//! metrics. The engine and xtask share nothing but these types.

pub mod arrival;
pub mod catalogue;
pub mod distribution;
pub mod engine_info;
pub mod engine_knobs;
pub mod generate;
pub mod jsonl;
pub mod location;
pub mod record;
pub mod request;
mod rng;
pub mod spec;
pub mod suite;
pub mod sweep;

pub use record::{
    BenchSummary, ClientTiming, FinishReason, ItlBasis, RecordStatus, RequestRecord, StepLogEntry,
};
pub use request::{Request, SamplingParams};

pub use arrival::Arrival;
pub use catalogue::{Catalogue, CatalogueError};
pub use distribution::LengthDist;
pub use engine_info::{EngineInfo, GpuProperties, ModelInfo};
pub use generate::{GenerateError, TokenSpace};
pub use location::InvalidToml;
pub use spec::{SpecError, WorkloadSpec};
pub use suite::{Suite, SuiteDevice};
