//! Finding the GPU: is a CUDA driver there at all, opening a context on a
//! non-default stream, and the static properties the pipeline fingerprints.
//!
//! cudarc loads libcuda lazily and *panics* when the library is missing, so
//! every entry point checks `is_culib_present()` first, and the driver calls
//! run under `catch_unwind` in case a library loads but lacks a symbol.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::super::BackendError;
use super::GpuProperties;

/// True when libcuda loads and reports at least one GPU.
pub fn is_available() -> bool {
    gpu_count().map(|n| n > 0).unwrap_or(false)
}

/// Number of visible GPUs, or why there are none to use.
pub fn gpu_count() -> Result<usize, BackendError> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(BackendError::NoDriver(
            "the CUDA driver library (libcuda.so.1) could not be loaded; is the NVIDIA driver installed?"
                .into(),
        ));
    }
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| BackendError::NoDriver("the CUDA driver library failed to load".into()))?
        .map_err(|e| BackendError::NoDriver(format!("cuInit/cuDeviceGetCount: {e}")))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// A context on GPU `ordinal` and a fresh non-default stream (the legacy
/// default stream cannot be captured into a CUDA graph). Event tracking is
/// turned off before the first allocation: the backend orders all its work on
/// this one stream, and tracked events would be recorded into graphs.
pub fn open(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>), BackendError> {
    let count = gpu_count()?;
    if ordinal >= count {
        return Err(BackendError::NoDriver(format!(
            "GPU {ordinal} requested but the driver reports {count} GPU(s)"
        )));
    }
    let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
        .map_err(|_| BackendError::Cuda("creating the CUDA context panicked".into()))?
        .map_err(|e| BackendError::Cuda(format!("creating the CUDA context: {e}")))?;
    // SAFETY: no allocation or stream work has happened on this context yet.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx
        .new_stream()
        .map_err(|e| BackendError::Cuda(format!("creating a stream: {e}")))?;
    Ok((ctx, stream))
}

/// Properties of every visible GPU; an empty list when no driver is present.
pub fn device_properties() -> Result<Vec<GpuProperties>, BackendError> {
    let count = match gpu_count() {
        Ok(n) => n,
        Err(BackendError::NoDriver(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let driver_version = driver_version()?;
    (0..count)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| BackendError::Cuda(format!("GPU {ordinal}: {e}")))?;
            properties_of(&ctx, driver_version)
        })
        .collect()
}

pub fn properties_of(
    ctx: &CudaContext,
    cuda_driver_version: i32,
) -> Result<GpuProperties, BackendError> {
    let err = |what: &str, e: cudarc::driver::DriverError| {
        BackendError::Cuda(format!("GPU {}: {what}: {e}", ctx.ordinal()))
    };
    let uuid = ctx.uuid().map_err(|e| err("uuid", e))?;
    let b: Vec<u8> = uuid.bytes.iter().map(|&c| c as u8).collect();
    let uuid = format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    );
    Ok(GpuProperties {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(|e| err("name", e))?,
        uuid,
        compute_capability: ctx
            .compute_capability()
            .map_err(|e| err("compute capability", e))?,
        sm_count: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| err("multiprocessor count", e))?,
        total_memory_bytes: ctx.total_mem().map_err(|e| err("total memory", e))? as u64,
        cuda_driver_version,
    })
}

/// cuDriverGetVersion, e.g. 13000.
pub fn driver_version() -> Result<i32, BackendError> {
    let mut v = 0i32;
    // SAFETY: the driver library is loaded (callers checked); writes one int.
    let r = unsafe { sys::cuDriverGetVersion(&mut v) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(BackendError::Cuda(format!("cuDriverGetVersion: {r:?}")));
    }
    Ok(v)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // On CI (no GPU) this is Err(NoDriver); on a GPU machine a count.
        match gpu_count() {
            Ok(n) => assert_eq!(is_available(), n > 0),
            Err(BackendError::NoDriver(msg)) => {
                assert!(!msg.is_empty());
                assert!(!is_available());
                assert!(device_properties().unwrap().is_empty());
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn hex_formats_bytes() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
