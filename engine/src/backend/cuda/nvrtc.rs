//! Compiling the kernels: the CUDA C sources in `engine/kernels/` are embedded
//! in the binary and compiled once per process by NVRTC for the device's
//! architecture. NVRTC does not find `cuda_bf16.h` on its own, so the CUDA
//! include folder is searched for here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::super::BackendError;

/// The kernel sources, concatenated in this order into one program.
/// `persistent.cu` is empty but in the persistent program
/// (`-DDYNO_PERSISTENT`, `persistent::defines`).
pub const SOURCES: [(&str, &str); 10] = [
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    (
        "activation.cu",
        include_str!("../../../kernels/activation.cu"),
    ),
    ("rope_kv.cu", include_str!("../../../kernels/rope_kv.cu")),
    (
        "attention_config.cuh",
        include_str!("../../../kernels/attention_config.cuh"),
    ),
    (
        "attention_mma.cu",
        include_str!("../../../kernels/attention_mma.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("sampling.cu", include_str!("../../../kernels/sampling.cu")),
    ("gemv.cu", include_str!("../../../kernels/gemv.cu")),
    (
        "persistent.cu",
        include_str!("../../../kernels/persistent.cu"),
    ),
];

/// The model sizes baked into the kernels as `-D` options: one attention
/// instantiation (head dim, GQA group) and fully unrolled small-batch
/// products (hidden, query width, intermediate size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelShape {
    pub head_dim: usize,
    pub group: usize,
    pub hidden: usize,
    pub qdim: usize,
    pub inter: usize,
    /// The attention kernel's register/work trade-off (`kernels::AttentionTuning`).
    pub attention: super::kernels::AttentionTuning,
    /// The KV cache's layout (`kernels::KvLayout`).
    pub kv_layout: super::kernels::KvLayout,
}

/// Folders that may hold `cuda_bf16.h`, in the order they are tried:
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`, and
/// the include folders of the `nvidia-cuda-runtime` pip packages found next
/// to any Python on `PATH` or in the usual site-packages folders.
pub fn header_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    for site in python_site_packages() {
        for sub in ["nvidia/cu13/include", "nvidia/cuda_runtime/include"] {
            dirs.push(site.join(sub));
        }
    }
    dirs
}

/// site-packages folders of Pythons on this machine (no Python is run).
fn python_site_packages() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Some(parent) = dir.parent() {
                roots.push(parent.to_path_buf());
            }
        }
    }
    roots.push(PathBuf::from("/usr"));
    roots.push(PathBuf::from("/usr/local"));
    let mut sites = Vec::new();
    for root in roots {
        let lib = root.join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("python3") {
                for sp in ["site-packages", "dist-packages"] {
                    let p = entry.path().join(sp);
                    if p.is_dir() && !sites.contains(&p) {
                        sites.push(p);
                    }
                }
            }
        }
    }
    sites
}

/// The first candidate folder that holds `cuda_bf16.h`, or an error listing
/// every folder that was tried.
pub fn find_cuda_include(candidates: &[PathBuf]) -> Result<PathBuf, BackendError> {
    candidates
        .iter()
        .find(|d| d.join("cuda_bf16.h").is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            BackendError::Cuda(format!(
                "cuda_bf16.h not found (needed to compile the kernels); looked in: {}. \
                 Set CUDA_HOME to a CUDA toolkit or `pip install nvidia-cuda-runtime`.",
                looked.join(", ")
            ))
        })
}

/// The whole kernel program as one source string.
pub fn program_source() -> String {
    let mut src = String::new();
    for (name, text) in SOURCES {
        src.push_str(&format!("// ---- {name}\n"));
        src.push_str(text);
        src.push('\n');
    }
    src
}

/// The launchers' geometry constants as `-D` options, so the kernels are
/// compiled with the values the launchers use.
pub fn launch_constants() -> Vec<String> {
    use super::kernels::{
        ADD_RMSNORM_WARPS, ATTN_MAX_SPLITS, GEMV_MAX_HIDDEN, GEMV_MAX_T, GEMV_ROWS, GEMV_WARPS,
    };
    [
        ("GEMV_WARPS", GEMV_WARPS),
        ("GEMV_ROWS", GEMV_ROWS),
        ("GEMV_MAX_T", GEMV_MAX_T),
        ("GEMV_MAX_HIDDEN", GEMV_MAX_HIDDEN),
        ("ATTN_MAX_SPLITS", ATTN_MAX_SPLITS),
        ("ADD_RMSNORM_WARPS", ADD_RMSNORM_WARPS),
    ]
    .iter()
    .map(|(name, value)| format!("-D{name}={value}"))
    .collect()
}

/// Compiles the program for `sm_{major}{minor}` into PTX, with the model's
/// shape baked in (one instantiation per kernel keeps the compile to about a
/// second).
pub fn compile(
    include: &Path,
    arch: (i32, i32),
    shape: KernelShape,
    extra_defines: &[String],
) -> Result<cudarc::nvrtc::Ptx, BackendError> {
    // SAFETY: only tries to dlopen libnvrtc by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(BackendError::Cuda(
            "libnvrtc could not be loaded: add the CUDA toolkit's lib64 folder (or the \
             nvidia pip package's lib folder) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = CompileOptions {
        include_paths: vec![include.display().to_string()],
        options: vec![
            format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
            "--std=c++17".into(),
            format!("-DDYNO_HEAD_DIM={}", shape.head_dim),
            format!("-DDYNO_GROUP={}", shape.group),
            format!(
                "-DDYNO_GROUP_CHUNKS={}",
                super::kernels::attention_group_chunks(shape.group)
            ),
            format!("-DDYNO_HIDDEN={}", shape.hidden),
            format!("-DDYNO_QDIM={}", shape.qdim),
            format!("-DDYNO_INTER={}", shape.inter),
        ]
        .into_iter()
        .chain(shape.attention.defines())
        .chain(std::iter::once(format!(
            "-DATTN_MMA_T_SHARED={}",
            super::kernels::mma_t_shared_bytes(shape.head_dim)
        )))
        .chain(shape.kv_layout.defines())
        .chain(launch_constants())
        .chain(extra_defines.iter().cloned())
        .collect(),
        name: Some("dyno_kernels.cu".into()),
        ..Default::default()
    };
    let source = program_source();
    std::panic::catch_unwind(|| compile_ptx_with_opts(&source, opts))
        .map_err(|_| BackendError::Cuda("NVRTC panicked".into()))?
        .map_err(|e| BackendError::Cuda(format!("compiling the kernels with NVRTC: {e}")))
}

/// Compiles the program for `ctx`'s device and the model's shape, and loads
/// it. `extra_defines`: none for the kernels of their own,
/// `persistent::defines()` for `decode_layers`' program.
pub fn load(
    ctx: &Arc<CudaContext>,
    shape: KernelShape,
    extra_defines: &[String],
) -> Result<Arc<CudaModule>, BackendError> {
    let arch = ctx
        .compute_capability()
        .map_err(|e| BackendError::Cuda(format!("compute capability: {e}")))?;
    let include = find_cuda_include(&header_candidates())?;
    let ptx = compile(&include, arch, shape, extra_defines)?;
    ctx.load_module(ptx)
        .map_err(|e| BackendError::Cuda(format!("loading the compiled kernels: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_header_error_lists_the_folders() {
        let dirs = vec![
            PathBuf::from("/nonexistent/a"),
            PathBuf::from("/nonexistent/b"),
        ];
        let err = find_cuda_include(&dirs).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/a") && err.contains("/nonexistent/b"),
            "{err}"
        );
    }

    #[test]
    fn candidates_start_with_cuda_home() {
        let c = header_candidates();
        assert!(c.iter().any(|p| p == Path::new("/usr/local/cuda/include")));
    }

    /// Compiles the kernels when NVRTC and the headers are installed here
    /// (no GPU needed); skipped otherwise.
    #[test]
    fn kernels_compile_with_nvrtc_when_available() {
        // CI installs NVRTC and the headers from PyPI and sets this, so the
        // test cannot pass there by skipping.
        let required = std::env::var_os("DYNO_REQUIRE_NVRTC").is_some();
        let include = match find_cuda_include(&header_candidates()) {
            Ok(include) => include,
            Err(e) if required => panic!("DYNO_REQUIRE_NVRTC is set: {e}"),
            Err(_) => {
                eprintln!("skipped: no CUDA headers");
                return;
            }
        };
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                !required,
                "DYNO_REQUIRE_NVRTC is set but libnvrtc does not load"
            );
            eprintln!("skipped: no libnvrtc");
            return;
        }
        // smollm2-135m, qwen3-0.6b, qwen2.5-0.5b, and a hidden size too wide
        // for the small-batch kernels' shared memory (they must still build).
        for (hd, g, hidden, qdim, inter) in [
            (64, 3, 576, 576, 1536),
            (128, 2, 1024, 2048, 3072),
            (64, 7, 896, 896, 4864),
            (128, 4, 4096, 4096, 14336),
            // Head dims 80 and 96, GQA groups split into uneven chunks
            // (13 → 7 + 6, 16 → 8 + 8), head dim 256, MHA with 32 heads.
            (80, 13, 256, 1040, 512),
            (96, 3, 1536, 1152, 4096),
            (128, 16, 2048, 2048, 6144),
            (256, 8, 2048, 2048, 8192),
            (64, 1, 2048, 2048, 8192),
        ] {
            let shape = KernelShape {
                head_dim: hd,
                group: g,
                hidden,
                qdim,
                inter,
                attention: Default::default(),
                kv_layout: super::super::kernels::KvLayout::default_for(16),
            };
            let src = compile(&include, (9, 0), shape, &[]).unwrap().to_src();
            use super::super::kernels::{KERNEL_NAMES, PERSISTENT_KERNEL};
            for name in KERNEL_NAMES.iter().filter(|&&n| n != PERSISTENT_KERNEL) {
                assert!(src.contains(name), "kernel {name} missing from the PTX");
            }
            assert!(
                !src.contains(&format!(".entry {PERSISTENT_KERNEL}")),
                "{PERSISTENT_KERNEL} belongs to the persistent program only"
            );
            // Register arrays must stay in registers (no local memory).
            assert!(
                !src.contains(".local"),
                "hd {hd} g {g}: kernel uses local memory"
            );
            // The persistent program, at smollm2-135m's and qwen2.5-0.5b's
            // shapes (each compile takes seconds).
            if [576, 896].contains(&hidden) {
                let persistent = compile(
                    &include,
                    (9, 0),
                    shape,
                    &super::super::persistent::defines(),
                )
                .unwrap()
                .to_src();
                assert!(
                    persistent.contains(&format!(".entry {PERSISTENT_KERNEL}")),
                    "hd {hd} g {g}: {PERSISTENT_KERNEL} missing from the persistent program"
                );
            }
        }
        // The attention tuning's choices: every keys-per-iteration count, a
        // register cap, K/V staged in shared memory and the tensor-core
        // loop, on smollm2-135m's, qwen3's, a wide and an uneven head dim.
        // Each either builds without local memory or fails with the error
        // that names the way out.
        use super::super::kernels::AttentionTuning;
        let tuned = |keys, min_blocks, staged| AttentionTuning {
            keys_per_iter: keys,
            min_blocks: Some(min_blocks),
            staged: Some(staged),
            mma: Some(false),
            mma_t: Some(false),
            pipeline: true,
            units_min_blocks: None,
        };
        let unpipelined = |keys| AttentionTuning {
            pipeline: false,
            ..tuned(keys, 1, false)
        };
        // Staged sub-warp loop: two iterations of K and V rows (4 warps of
        // 32 / lanes-per-key sub-warps, keys_per_iter keys each) past the
        // kernel's 40 KiB stage do not fit in static shared memory.
        let subwarp = |hd: usize, g: usize, attention: AttentionTuning| {
            let lanes = (hd / 8).next_power_of_two().max(4);
            let stage_bytes = 2 * 2 * 4 * (32 / lanes) * attention.keys_per_iter * hd * 2;
            let error = (attention.staged == Some(true) && stage_bytes > 40 * 1024)
                .then_some("use fewer keys per iteration");
            (hd, g, attention, error)
        };
        let mma = AttentionTuning {
            mma: Some(true),
            staged: Some(false),
            ..Default::default()
        };
        let staged_mma = AttentionTuning {
            staged: Some(true),
            ..mma
        };
        // Forced on with the staging left to its default: staged where the
        // rows fit, so head dim 256 builds unstaged.
        let mma_default_staging = AttentionTuning {
            mma: Some(true),
            ..Default::default()
        };
        // The transposed tensor-core loop at every head dim it may run
        // (multiples of 16) and group size, and with the other switches
        // that conflict with it.
        let mma_t = AttentionTuning {
            mma_t: Some(true),
            ..Default::default()
        };
        let mma_t_staged = AttentionTuning {
            staged: Some(true),
            ..mma_t
        };
        let keys_at_default = AttentionTuning {
            keys_per_iter: 4,
            ..Default::default()
        };
        let mut cases: Vec<(usize, usize, AttentionTuning, Option<&str>)> =
            super::super::kernels::ATTN_KEYS_PER_ITER_CHOICES
                .iter()
                .map(|&keys| subwarp(64, 3, tuned(keys, 1, false)))
                .collect();
        cases.extend(
            [
                (256, 8, tuned(2, 1, false)),
                (64, 3, tuned(1, 5, false)),
                (64, 3, tuned(1, 1, true)),
                (64, 3, tuned(2, 1, true)),
                (64, 3, tuned(4, 1, true)),
                (64, 3, tuned(8, 1, true)),
                (128, 2, tuned(2, 1, true)),
                (80, 13, tuned(2, 1, true)),
                (256, 8, tuned(2, 1, true)),
                // The sub-warp loop without its pipelining at qwen3's and
                // smollm2's head dims, and the widest.
                (128, 2, unpipelined(1)),
                (128, 2, unpipelined(2)),
                (64, 3, unpipelined(2)),
                (256, 8, unpipelined(2)),
            ]
            .map(|(hd, g, attention)| subwarp(hd, g, attention)),
        );
        cases.extend([
            // Tensor cores: head dims that are multiples of 16 (64, 80,
            // 128, 256), any group; 72 is not, and keeps the sub-warp loop.
            (64, 3, mma, None),
            (128, 2, mma, None),
            (80, 13, mma, None),
            (256, 8, mma, None),
            (72, 1, mma, None),
            // Staged tensor-core loop: two iterations of rows fit at head
            // dims 64, 80 and 128, not at 256.
            (64, 3, staged_mma, None),
            (128, 2, staged_mma, None),
            (80, 13, staged_mma, None),
            (256, 8, staged_mma, Some("do not fit")),
            (64, 3, mma_default_staging, None),
            (128, 2, mma_default_staging, None),
            (256, 8, mma_default_staging, None),
            // Keys per iteration tune the sub-warp loop only: asked of the
            // tensor-core loop (head dim 64, its default), the compile
            // says how to measure them.
            (64, 3, keys_at_default, Some("add DYNO_CUDA_ATTN_MMA=0")),
            (128, 2, mma_t, None),
            (128, 1, mma_t, None),
            (128, 8, mma_t, None),
            (128, 13, mma_t, None),
            (96, 4, mma_t, None),
            (80, 13, mma_t, None),
            (64, 3, mma_t, None),
            (256, 8, mma_t, None),
            (128, 2, mma_t_staged, Some("stages its own rows")),
        ]);
        use super::super::kernels::KvLayout;
        // smollm2-135m's hidden and intermediate sizes at any head geometry.
        let shape_of = |hd: usize, g: usize, attention, kv_layout| KernelShape {
            head_dim: hd,
            group: g,
            hidden: 576,
            qdim: hd * g,
            inter: 1536,
            attention,
            kv_layout,
        };
        for (hd, g, attention, error) in cases {
            let shape = shape_of(hd, g, attention, KvLayout::default_for(16));
            match error {
                None => {
                    let src = compile(&include, (9, 0), shape, &[]).unwrap().to_src();
                    assert!(
                        !src.contains(".local"),
                        "hd {hd} g {g} {attention:?}: kernel uses local memory"
                    );
                }
                Some(text) => {
                    let e = compile(&include, (9, 0), shape, &[])
                        .unwrap_err()
                        .to_string();
                    assert!(e.contains(text), "hd {hd} g {g} {attention:?}: {e}");
                }
            }
        }
        // The head-major KV layout, with either attention loop (head dim 64:
        // tensor cores, 128: the transposed tensor-core loop as the
        // backend settles it on sm_90, and sub-warps with it off) and the
        // persistent program. The default follows the loop: head-major with
        // tensor cores, else slot-major, the same PTX as asking for that
        // layout.
        let settled = |mma_t| {
            AttentionTuning {
                mma_t,
                ..Default::default()
            }
            .resolve_mma_t(128, 9, 228 * 1024)
            .unwrap()
        };
        for (hd, g, attention, followed) in [
            (
                64,
                3,
                AttentionTuning::default(),
                KvLayout::HeadMajor { block_size: 16 },
            ),
            (
                128,
                2,
                settled(None),
                KvLayout::HeadMajor { block_size: 16 },
            ),
            (128, 2, settled(Some(false)), KvLayout::SlotMajor),
        ] {
            let ptx = |kv_layout, extra: &[String]| {
                let shape = shape_of(hd, g, attention, kv_layout);
                compile(&include, (9, 0), shape, extra).unwrap().to_src()
            };
            let head_major = KvLayout::HeadMajor { block_size: 16 };
            let head = ptx(head_major, &[]);
            let persistent = ptx(head_major, &super::super::persistent::defines());
            for src in [&head, &persistent] {
                assert!(!src.contains(".local"), "hd {hd} head-major: local memory");
            }
            let expected = if followed == head_major {
                head
            } else {
                ptx(followed, &[])
            };
            assert!(
                ptx(KvLayout::default_for(16), &[]) == expected,
                "hd {hd}: the default KV layout does not compile as {followed:?}"
            );
        }
    }
}
