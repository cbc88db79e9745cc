//! The GPUs as NVML sees them: static properties for the fingerprint, and
//! clocks, temperature, power and throttle reasons sampled around each trial
//! (a throttled trial is a different measurement, and the record says so).
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`); when the library or the
//! driver is missing there is simply no GPU, never a panic.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Nvml};

use crate::run_record::{GpuFingerprint, GpuSample};

pub struct GpuMonitor {
    nvml: Option<Nvml>,
    /// Why NVML is not available, for the log.
    unavailable: Option<String>,
}

impl GpuMonitor {
    pub fn open() -> GpuMonitor {
        match Nvml::init() {
            Ok(nvml) => GpuMonitor {
                nvml: Some(nvml),
                unavailable: None,
            },
            Err(e) => GpuMonitor {
                nvml: None,
                unavailable: Some(e.to_string()),
            },
        }
    }

    /// A monitor that sees no GPU (CPU runs, tests).
    pub fn none() -> GpuMonitor {
        GpuMonitor {
            nvml: None,
            unavailable: Some("not requested".into()),
        }
    }

    pub fn unavailable_reason(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Every GPU's fingerprint. The SM count is left to `engine info`
    /// (NVML has no call for it).
    pub fn devices(&self) -> Vec<GpuFingerprint> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let driver_version = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        let cuda_driver_version = nvml
            .sys_cuda_driver_version()
            .map(|v| {
                format!(
                    "{}.{}",
                    cuda_driver_version_major(v),
                    cuda_driver_version_minor(v)
                )
            })
            .unwrap_or_else(|_| "unknown".into());
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| nvml.device_by_index(i).ok())
            .map(|d| GpuFingerprint {
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                uuid: d.uuid().unwrap_or_else(|_| "unknown".into()),
                compute_capability: d
                    .cuda_compute_capability()
                    .map(|c| format!("{}.{}", c.major, c.minor))
                    .unwrap_or_else(|_| "unknown".into()),
                sm_count: None,
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                driver_version: driver_version.clone(),
                cuda_driver_version: cuda_driver_version.clone(),
                power_limit_w: d.power_management_limit().ok().map(|mw| mw as f64 / 1e3),
            })
            .collect()
    }

    /// The state of GPU `index` now; None without NVML or that GPU.
    pub fn sample(&self, index: u32) -> Option<GpuSample> {
        let d = self.nvml.as_ref()?.device_by_index(index).ok()?;
        Some(GpuSample {
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1e3),
            throttle_reasons: d
                .current_throttle_reasons()
                .map(|r| r.iter_names().map(|(n, _)| n.to_lowercase()).collect())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_means_empty_not_panic() {
        let m = GpuMonitor::none();
        assert!(m.devices().is_empty());
        assert!(m.sample(0).is_none());
    }

    #[test]
    fn open_never_panics() {
        // On a machine without the NVIDIA library this is an empty monitor;
        // with it, every listed device has a name.
        let m = GpuMonitor::open();
        for d in m.devices() {
            assert!(!d.name.is_empty());
        }
    }
}
