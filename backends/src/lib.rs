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

fn not_compiled(kind: BackendKind) -> Error {
    Error::Backend(format!(
        "this rfgen was built without the {kind} backend; rebuild with `--features {kind}`"
    ))
}

/// Runs `task` on `kind`'s default device, after checking that the device can be used.
pub fn run<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
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
                probe::<WgpuBackend>(&device, "wgpu: no usable GPU adapter (install a Vulkan/Metal/DX12 driver, e.g. Mesa lavapipe: apt-get install mesa-vulkan-drivers)")?;
                return task.run::<WgpuBackend>(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(kind))
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                cuda_driver_present()?;
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
            #[cfg(feature = "cuda")]
            {
                cuda_driver_present()?;
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

use burn::tensor::ElementConversion;

/// burn-cuda panics on its device thread when libcuda is absent; look for the driver first.
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> Result<()> {
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
