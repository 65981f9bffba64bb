//! Run-time backend choice for rfgen: `ndarray` (CPU), `wgpu` (Vulkan/Metal/DX12/WebGPU) and
//! `cuda`, each behind its cargo feature. Models stay generic; a [`BackendTask`] is run on the
//! chosen backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
pub use rfgen_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Ndarray,
    Wgpu,
    Cuda,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Ndarray, BackendKind::Wgpu, BackendKind::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend's cargo feature.
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ndarray" | "cpu" => Ok(BackendKind::Ndarray),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(Error::Backend(format!("unknown backend {other:?} (expected ndarray, wgpu or cuda)"))),
        }
    }
}

/// Precision of the float tensors a backend computes in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::Backend(format!("unknown dtype {other:?} (expected f32, f16 or bf16)"))),
        }
    }
}

/// Work that is generic over the backend; [`run`] instantiates it for the chosen one.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

#[cfg(feature = "ndarray")]
pub type NdArrayBackend = burn::backend::NdArray<f32>;
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;
/// wgpu computing in half precision (needs the adapter feature `shader-f16`).
#[cfg(feature = "wgpu")]
pub type WgpuF16Backend = burn::backend::Wgpu<burn::tensor::f16, i32>;
#[cfg(feature = "cuda")]
pub type CudaF16Backend = burn::backend::Cuda<burn::tensor::f16, i32>;
#[cfg(feature = "cuda")]
pub type CudaBf16Backend = burn::backend::Cuda<burn::tensor::bf16, i32>;

fn not_compiled(kind: BackendKind) -> Error {
    Error::Backend(format!(
        "this rfgen was built without the {kind} backend; rebuild with `--features {kind}`"
    ))
}

/// Runs `task` on `kind`'s default device in f32, after checking that the device can be used.
pub fn run<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    run_with_precision(kind, Precision::F32, task)
}

const NO_WGPU_ADAPTER: &str =
    "wgpu: no usable GPU adapter (install a Vulkan/Metal/DX12 driver, e.g. Mesa lavapipe: apt-get install mesa-vulkan-drivers)";

/// Runs `task` on `kind`'s default device computing in `precision`: f32 everywhere; f16 on
/// wgpu (adapters with `shader-f16`) and CUDA; bf16 on CUDA only. Anything else is a clear error.
pub fn run_with_precision<T: BackendTask>(kind: BackendKind, precision: Precision, task: T) -> Result<T::Output> {
    if kind == BackendKind::Cuda {
        // No GPU is the first thing to say, whatever this binary was built with.
        cuda_driver_present()?;
    }
    match (kind, precision) {
        (_, Precision::F32) => {}
        (BackendKind::Ndarray, p) => {
            return Err(Error::Backend(format!(
                "--dtype {p}: the ndarray backend computes in f32 only; half precision runs on --backend wgpu \
                 (f16, on adapters with shader-f16) or --backend cuda (f16, bf16)"
            )))
        }
        (BackendKind::Wgpu, Precision::Bf16) => {
            return Err(Error::Backend(
                "--dtype bf16: wgpu has no bf16 (WGSL has no bfloat16 type); use --dtype f16 on wgpu, or bf16 on --backend cuda".into(),
            ))
        }
        (BackendKind::Wgpu, Precision::F16) => {
            #[cfg(feature = "wgpu")]
            {
                let device = burn::backend::wgpu::WgpuDevice::default();
                wgpu_f16_ready(&device)?;
                return task.run::<WgpuF16Backend>(device);
            }
            #[allow(unreachable_code)]
            return Err(not_compiled(kind));
        }
        (BackendKind::Cuda, p) => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                let msg = "cuda: the CUDA device could not be initialised";
                return match p {
                    Precision::F16 => {
                        probe::<CudaF16Backend>(&device, msg)?;
                        task.run::<CudaF16Backend>(device)
                    }
                    _ => {
                        probe::<CudaBf16Backend>(&device, msg)?;
                        task.run::<CudaBf16Backend>(device)
                    }
                };
            }
            #[allow(unreachable_code)]
            {
                let _ = p;
                return Err(not_compiled(kind));
            }
        }
    }
    match kind {
        BackendKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            return task.run::<NdArrayBackend>(Default::default());
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = burn::backend::wgpu::WgpuDevice::default();
                probe::<WgpuBackend>(&device, NO_WGPU_ADAPTER)?;
                return task.run::<WgpuBackend>(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                probe::<CudaBackend>(&device, "cuda: the CUDA device could not be initialised")?;
                return task.run::<CudaBackend>(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
    }
}

/// Training work, generic over an autodiff backend; [`run_train`] instantiates it.
#[cfg(feature = "train")]
pub trait TrainTask {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `task` on `kind` wrapped in burn's `Autodiff`, after the same device checks as [`run`].
#[cfg(feature = "train")]
pub fn run_train<T: TrainTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    use burn::backend::Autodiff;
    match kind {
        BackendKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            return task.run::<Autodiff<NdArrayBackend>>(Default::default());
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = burn::backend::wgpu::WgpuDevice::default();
                probe::<WgpuBackend>(&device, "wgpu: no usable GPU adapter (install a Vulkan/Metal/DX12 driver, e.g. Mesa lavapipe: apt-get install mesa-vulkan-drivers)")?;
                return task.run::<Autodiff<WgpuBackend>>(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
        BackendKind::Cuda => {
            // As for sampling: no GPU is the first thing to say, whatever this binary was built with.
            cuda_driver_present()?;
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                probe::<CudaBackend>(&device, "cuda: the CUDA device could not be initialised")?;
                return task.run::<Autodiff<CudaBackend>>(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
    }
}

/// Runs a tiny computation; a backend that panics while starting up becomes a clear error.
#[allow(dead_code)]
fn probe<B: Backend>(device: &B::Device, msg: &str) -> Result<()> {
    let device = device.clone();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let t = burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar().elem::<f32>()
    }));
    std::panic::set_hook(quiet);
    match outcome {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(Error::Backend(format!("{msg} (probe returned {v})"))),
        Err(_) => Err(Error::Backend(msg.to_string())),
    }
}

/// The adapter feature wgpu needs for f16 compute.
pub const WGPU_F16_FEATURE: &str = "shader-f16";

/// Whether wgpu's default adapter computes in f16, as a clear error when it does not.
///
/// burn fixes a device's float dtype at its first use in a process (a registry keyed by the
/// device, not the backend type), so the f16 device must not have been used in f32 before.
#[cfg(feature = "wgpu")]
fn wgpu_f16_ready(device: &burn::backend::wgpu::WgpuDevice) -> Result<()> {
    use burn::tensor::{get_device_settings, DType, FloatDType};
    let dev = device.clone();
    let supported = quietly(move || WgpuF16Backend::supports_dtype(&dev, DType::F16))
        .ok_or_else(|| Error::Backend(NO_WGPU_ADAPTER.into()))?;
    if !supported {
        return Err(Error::Backend(format!(
            "--dtype f16: the wgpu adapter lacks the `{WGPU_F16_FEATURE}` feature (wgpu::Features::SHADER_F16; on Vulkan: \
             shaderFloat16 + storageBuffer16BitAccess + uniformAndStorageBuffer16BitAccess); use --dtype f32"
        )));
    }
    let settings = get_device_settings::<WgpuF16Backend>(device);
    if settings.float_dtype != FloatDType::F16 {
        return Err(Error::Backend(format!(
            "--dtype f16: this process already uses the wgpu device in {:?}; a device's float dtype is fixed at its first use",
            settings.float_dtype
        )));
    }
    probe::<WgpuF16Backend>(device, NO_WGPU_ADAPTER)
}

/// Runs `f` with panics silenced; `None` if it panicked.
#[allow(dead_code)]
fn quietly<R>(f: impl FnOnce() -> R) -> Option<R> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    out
}

use burn::tensor::ElementConversion;

/// burn-cuda panics on its device thread when libcuda is absent; look for the driver first.
/// Checked in every build, so that a machine without a GPU is told so (not to rebuild).
pub fn cuda_driver_present() -> Result<()> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/compat",
        "/usr/lib/wsl/lib",
        "/usr/lib/aarch64-linux-gnu",
    ];
    let from_env = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let found = dirs
        .iter()
        .map(|d| d.to_string())
        .chain(from_env.split(':').filter(|s| !s.is_empty()).map(str::to_string))
        .any(|d| std::path::Path::new(&d).join("libcuda.so.1").exists() || std::path::Path::new(&d).join("libcuda.so").exists());
    let device_node = std::path::Path::new("/dev/nvidiactl").exists() || std::path::Path::new("/dev/dxg").exists();
    if found && device_node {
        Ok(())
    } else {
        Err(Error::Backend(
            "cuda: no NVIDIA GPU/driver found (libcuda.so.1 and /dev/nvidiactl are required); use --backend ndarray or wgpu".into(),
        ))
    }
}
