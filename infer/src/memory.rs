//! Device memory as the backend's allocator reports it, for `bench`.

/// A backend that may report how much device memory its allocator holds.
pub trait DeviceMemory: burn::tensor::backend::Backend {
    /// Bytes the backend has reserved on `device` right now, or `None` where the backend
    /// does not track it (NdArray allocates from the process heap).
    ///
    /// On CubeCL backends (Cuda, Wgpu) this is the memory pool's `bytes_reserved`: memory
    /// taken from the driver, in use or cached for reuse, the analogue of PyTorch's
    /// `torch.cuda.memory_reserved()`. Weights are included.
    fn reserved_bytes(device: &Self::Device) -> Option<u64>;
}

#[cfg(feature = "ndarray")]
impl DeviceMemory for burn::backend::NdArray {
    fn reserved_bytes(_device: &Self::Device) -> Option<u64> {
        None
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R, F, I, BT> DeviceMemory for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    fn reserved_bytes(device: &Self::Device) -> Option<u64> {
        R::client(device)
            .memory_usage()
            .ok()
            .map(|usage| usage.bytes_reserved)
    }
}
