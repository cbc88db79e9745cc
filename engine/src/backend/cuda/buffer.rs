//! Device and pinned host buffers addressed by raw pointers. Kernels and
//! cuBLAS take plain device addresses, and CUDA graphs bake those addresses
//! in, so every buffer is allocated once and never moves.

use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr};

use super::super::BackendError;

/// A device allocation that lives as long as the backend.
pub struct DeviceBuffer {
    _slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceBuffer {
    /// `bytes` of zeroed device memory (`what` names it in errors).
    pub fn zeroed(
        stream: &Arc<CudaStream>,
        bytes: usize,
        what: &str,
    ) -> Result<Self, BackendError> {
        let slice = stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| BackendError::OutOfMemory(format!("{what}: {bytes} bytes: {e}")))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Ok(DeviceBuffer {
            _slice: slice,
            ptr,
            bytes,
        })
    }

    /// A copy of `data` on the device.
    pub fn upload<T: Copy>(
        stream: &Arc<CudaStream>,
        data: &[T],
        what: &str,
    ) -> Result<Self, BackendError> {
        let bytes = std::mem::size_of_val(data);
        let buf = Self::zeroed(stream, bytes, what)?;
        if bytes > 0 {
            // SAFETY: `buf` holds `bytes` bytes; the copy is synchronous
            // w.r.t. `data` because we synchronize before returning.
            unsafe { result::memcpy_htod_async(buf.ptr, data, stream.cu_stream()) }
                .map_err(|e| BackendError::Cuda(format!("uploading {what}: {e}")))?;
            stream
                .synchronize()
                .map_err(|e| BackendError::Cuda(format!("uploading {what}: {e}")))?;
        }
        Ok(buf)
    }

    /// Address of element `index` of `T`s.
    pub fn at<T>(&self, index: usize) -> u64 {
        self.ptr + (index * std::mem::size_of::<T>()) as u64
    }
}

/// Page-locked host memory for the per-step uploads and downloads (async
/// copies from pageable memory would stage through a driver buffer).
pub struct PinnedBuffer<T: Copy + Default> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy + Default> PinnedBuffer<T> {
    pub fn new(len: usize) -> Result<Self, BackendError> {
        let bytes = (len.max(1)) * std::mem::size_of::<T>();
        // SAFETY: plain page-locked allocation; freed in Drop.
        let ptr = unsafe { result::malloc_host(bytes, 0) }
            .map_err(|e| BackendError::OutOfMemory(format!("pinned host buffer: {e}")))?
            as *mut T;
        let mut buf = PinnedBuffer { ptr, len };
        buf.as_mut_slice().fill(T::default());
        Ok(buf)
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialized values (filled in new).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy + Default> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host in new; freed once.
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}
