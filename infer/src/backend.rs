//! Choosing a Burn backend and a float dtype at run time.
//!
//! The dtype is part of the backend type (`Cuda<half::bf16>`, `Wgpu<half::f16>`), so every
//! tensor the model creates, weights included, is in that dtype; [`with_backend!`] binds
//! the pair a user picked to a concrete type.

use clap::ValueEnum;

/// The backends a user can pick with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CPU, pure Rust (Burn's NdArray). f32 only.
    Ndarray,
    /// GPU through wgpu: Vulkan, Metal, DX12 or WebGPU. f32 or f16.
    Wgpu,
    /// NVIDIA GPU through CUDA (binaries built with `--features cuda`). f32, f16 or bf16.
    Cuda,
}

/// Float type of weights and activations (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Dtype {
    /// 32-bit float: exact parity with HF transformers in f32.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16, what ModernBERT was trained in (Cuda only).
    Bf16,
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// Runs `$body` with the type alias `$B` bound to the chosen backend (and dtype, f32 when
/// omitted) and `$device` to its default device. A backend not compiled in, or a dtype the
/// backend cannot run, is an `anyhow` error that says what to use instead.
///
/// ```ignore
/// with_backend!(BackendKind::Cuda, Dtype::Bf16, |B, device| run::<B>(&args, device))
/// ```
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {
        $crate::with_backend!($kind, $crate::Dtype::F32, |$B, $device| $body)
    };
    ($kind:expr, $dtype:expr, |$B:ident, $device:ident| $body:expr) => {{
        #[allow(unreachable_code)]
        match ($kind, $dtype) {
            ($crate::BackendKind::Ndarray, $crate::Dtype::F32) => {
                #[cfg(feature = "ndarray")]
                {
                    type $B = burn::backend::NdArray;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "ndarray"))]
                anyhow::bail!("this binary was built without the `ndarray` feature")
            }
            ($crate::BackendKind::Ndarray, dtype) => anyhow::bail!(
                "--backend ndarray runs f32 only, not {dtype}; use --backend cuda (f16, bf16) \
                 or --backend wgpu (f16) for half precision"
            ),
            ($crate::BackendKind::Wgpu, $crate::Dtype::Bf16) => anyhow::bail!(
                "--backend wgpu has no bf16 (WGSL lacks it); use --dtype f16 or f32, or \
                 --backend cuda for bf16"
            ),
            ($crate::BackendKind::Wgpu, dtype) => {
                #[cfg(feature = "wgpu")]
                {
                    match dtype {
                        $crate::Dtype::F16 => {
                            type $B = burn::backend::Wgpu<$crate::half::f16>;
                            let $device = Default::default();
                            $body
                        }
                        _ => {
                            type $B = burn::backend::Wgpu;
                            let $device = Default::default();
                            $body
                        }
                    }
                }
                #[cfg(not(feature = "wgpu"))]
                {
                    let _ = dtype;
                    anyhow::bail!(
                        "this binary was built without the `wgpu` feature; rebuild with \
                         `--features wgpu`"
                    )
                }
            }
            ($crate::BackendKind::Cuda, dtype) => {
                #[cfg(feature = "cuda")]
                {
                    match dtype {
                        $crate::Dtype::Bf16 => {
                            type $B = burn::backend::Cuda<$crate::half::bf16>;
                            let $device = Default::default();
                            $body
                        }
                        $crate::Dtype::F16 => {
                            type $B = burn::backend::Cuda<$crate::half::f16>;
                            let $device = Default::default();
                            $body
                        }
                        $crate::Dtype::F32 => {
                            type $B = burn::backend::Cuda;
                            let $device = Default::default();
                            $body
                        }
                    }
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = dtype;
                    anyhow::bail!(
                        "this binary was built without the `cuda` feature; rebuild with \
                         `--features cuda`"
                    )
                }
            }
        }
    }};
}
