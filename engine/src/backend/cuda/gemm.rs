//! Matrix products through cuBLAS: `y[T, N] = x[T, K] · W[N, K]ᵀ`, bf16
//! operands, f32 accumulation and f32 output (every consumer — RoPE, SiLU·mul,
//! the residual add, sampling — works in f32, so no product is rounded to
//! bf16 before it is used). The handle runs on the
//! backend's stream and owns a fixed workspace, so GEMMs can be captured
//! into CUDA graphs (cuBLAS must not allocate during capture).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as bsys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::super::BackendError;

/// cuBLAS workspace: enough for its split-K and Hopper kernels.
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct Gemm {
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
}

impl Gemm {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self, BackendError> {
        // SAFETY: only tries to dlopen libcublas by its usual names.
        if !unsafe { bsys::is_culib_present() } {
            return Err(BackendError::Cuda(
                "libcublas could not be loaded: add the CUDA toolkit's lib64 folder to \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| BackendError::Cuda(format!("creating the cuBLAS handle: {e}")))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| BackendError::OutOfMemory(format!("cuBLAS workspace: {e}")))?;
        let ptr = {
            let (ptr, _sync) = workspace.device_ptr(stream);
            ptr
        };
        // SAFETY: the workspace outlives the handle (both owned by Self,
        // workspace dropped after), and is only used on this stream.
        unsafe {
            bsys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, WORKSPACE_BYTES)
                .result()
                .map_err(|e| BackendError::Cuda(format!("cublasSetWorkspace: {e}")))?;
        }
        Ok(Gemm {
            blas,
            _workspace: workspace,
        })
    }

    #[allow(clippy::too_many_arguments)]
    /// `y[t, n] = Σ_k x[t, k] · w[n, k]` for row-major `x` (`rows × k`),
    /// `w` (`n × k`) and `y` (`rows × n`). Pointers are device addresses.
    pub fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<(), BackendError> {
        if rows == 0 {
            return Ok(());
        }
        let alpha = 1.0f32;
        let beta = 0.0f32;
        // Column-major view: yᵀ (n × rows) = W (k × n)ᵀ · xᵀ (k × rows).
        // SAFETY: the pointers address device buffers of the stated shapes,
        // checked by the callers against the arena's capacities.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                rows as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                bsys::cudaDataType::CUDA_R_16BF,
                k as i32,
                x as *const c_void,
                bsys::cudaDataType::CUDA_R_16BF,
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                bsys::cudaDataType::CUDA_R_32F,
                n as i32,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| BackendError::Cuda(format!("cublasGemmEx ({rows}x{n}x{k}): {e}")))
    }
}
