//! `cargo run -p modernbert-kernels --features cuda --example launch_gap`: what one kernel
//! launch costs on a CubeCL backend when the kernel takes its buffers as `Tensor`s or as
//! `Array`s, and prints a table. A `Tensor` argument makes CubeCL 0.10 upload the shapes and
//! strides of every tensor argument (a host-to-device copy in the kernel's stream) before each
//! launch; an `Array` passes its length with the kernel's parameters. Each row times 400
//! back-to-back launches of one kernel (six buffers, as the attention kernels have) over
//! 270k units, each spinning `iters` dependent multiply-adds: at 0 the launches themselves
//! set the pace, at 2000 and 20000 the GPU does, and the difference between the two rows of
//! an `iters` value is what the upload adds to each launch on the GPU's timeline. Our
//! attention kernels take `Array`s for this reason (BENCHMARKS.md, session 17).
use std::time::Instant;

use burn::backend::Cuda;
use burn::tensor::backend::Backend;
use burn::tensor::Distribution;
use cubecl::prelude::*;

/// `iters` dependent multiply-adds on `x`.
#[cube]
fn spin(x: f32, iters: u32) -> f32 {
    let mut x = x;
    for _ in 0..iters {
        x = x * f32::new(0.999) + f32::new(0.001);
    }
    x
}

#[cube(launch)]
fn spin_tensor(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    c: &Tensor<f32>,
    d: &Tensor<f32>,
    out: &mut Tensor<f32>,
    out2: &mut Tensor<f32>,
    iters: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let x = spin(a[i] + b[i] + c[i] + d[i], iters);
        out[i] = x;
        out2[i] = x;
    }
}

#[cube(launch)]
fn spin_array(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &Array<f32>,
    d: &Array<f32>,
    out: &mut Array<f32>,
    out2: &mut Array<f32>,
    iters: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let x = spin(a[i] + b[i] + c[i] + d[i], iters);
        out[i] = x;
        out2[i] = x;
    }
}

fn main() {
    type B = Cuda;
    let device = Default::default();
    let units = 256usize;
    let cubes = 132 * 8;
    let n = units * cubes;
    let t: Vec<_> = (0..6)
        .map(|_| {
            burn::tensor::Tensor::<B, 3>::random([n / 64, 8, 8], Distribution::Default, &device)
                .into_primitive()
                .tensor()
        })
        .collect();
    let client = t[0].client.clone();
    println!("| args | iters | launches | µs per launch |");
    println!("|---|---|---|---|");
    for iters in [0u32, 2000, 20000] {
        for array in [false, true] {
            let launch = || {
                let count = CubeCount::Static(cubes as u32, 1, 1);
                let dim = CubeDim::new_1d(units as u32);
                if array {
                    spin_array::launch::<cubecl::cuda::CudaRuntime>(
                        &client,
                        count,
                        dim,
                        t[0].clone().into_array_arg(),
                        t[1].clone().into_array_arg(),
                        t[2].clone().into_array_arg(),
                        t[3].clone().into_array_arg(),
                        t[4].clone().into_array_arg(),
                        t[5].clone().into_array_arg(),
                        iters,
                    );
                } else {
                    spin_tensor::launch::<cubecl::cuda::CudaRuntime>(
                        &client,
                        count,
                        dim,
                        t[0].clone().into_tensor_arg(),
                        t[1].clone().into_tensor_arg(),
                        t[2].clone().into_tensor_arg(),
                        t[3].clone().into_tensor_arg(),
                        t[4].clone().into_tensor_arg(),
                        t[5].clone().into_tensor_arg(),
                        iters,
                    );
                }
            };
            for _ in 0..20 {
                launch();
            }
            B::sync(&device).unwrap();
            let launches = 400;
            let start = Instant::now();
            for _ in 0..launches {
                launch();
            }
            B::sync(&device).unwrap();
            let us = start.elapsed().as_secs_f64() * 1e6 / launches as f64;
            let args = if array { "Array" } else { "Tensor" };
            println!("| {args} | {iters} | {launches} | {us:.2} |");
        }
    }
}
