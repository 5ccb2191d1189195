//! Choosing a Burn backend at run time.

use clap::ValueEnum;

/// The backends a user can pick with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CPU, pure Rust (Burn's NdArray).
    Ndarray,
    /// GPU through wgpu: Vulkan, Metal, DX12 or WebGPU.
    Wgpu,
    /// NVIDIA GPU through CUDA (binaries built with `--features cuda`).
    Cuda,
}

/// Runs `$body` with the type alias `$B` bound to the chosen backend and `$device` to its
/// default device; a backend not compiled in is an error naming the cargo feature.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::BackendKind::Ndarray => {
                #[cfg(feature = "ndarray")]
                {
                    type $B = burn::backend::NdArray;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "ndarray"))]
                anyhow::bail!("this binary was built without the `ndarray` feature")
            }
            $crate::BackendKind::Wgpu => {
                #[cfg(feature = "wgpu")]
                {
                    type $B = burn::backend::Wgpu;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "wgpu"))]
                anyhow::bail!("this binary was built without the `wgpu` feature; rebuild with `--features wgpu`")
            }
            $crate::BackendKind::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    type $B = burn::backend::Cuda;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "cuda"))]
                anyhow::bail!("this binary was built without the `cuda` feature; rebuild with `--features cuda`")
            }
        }
    }};
}
