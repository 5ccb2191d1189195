//! `parity DIR... [--backend ndarray|wgpu|cuda] [--tolerance T]`: runs checkpoint
//! directories holding `case.json` and `expected.safetensors` (made by
//! `tests/fixtures/generate.py` or `scripts/make_reference.py`) and prints each one's max
//! relative error against HF's outputs. Exits non-zero if any is above the tolerance. Used on
//! the GPU machine, where the test binaries are too large to carry.

use anyhow::{bail, Context, Result};
use modernbert_tests::{parity, Fixture};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dirs, mut backend, mut tolerance) = (Vec::new(), "ndarray".to_string(), 1e-4f32);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => backend = args.next().context("--backend needs a value")?,
            "--tolerance" => {
                tolerance = args.next().context("--tolerance needs a value")?.parse()?
            }
            _ => dirs.push(arg),
        }
    }
    if dirs.is_empty() {
        bail!("usage: parity DIR... [--backend ndarray|wgpu|cuda] [--tolerance T]");
    }
    let mut failed = 0;
    for dir in &dirs {
        if !check(dir, &backend, tolerance)? {
            failed += 1;
        }
    }
    println!("{} passed, {failed} failed", dirs.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs one directory; `Ok(false)` when over the tolerance.
fn check(dir: &str, backend: &str, tolerance: f32) -> Result<bool> {
    let fixture = Fixture::load(dir).with_context(|| format!("reading {dir}"))?;
    let start = std::time::Instant::now();
    let error = match backend {
        #[cfg(feature = "ndarray")]
        "ndarray" => parity::<burn::backend::NdArray>(&fixture, &Default::default())?,
        #[cfg(feature = "wgpu")]
        "wgpu" => parity::<burn::backend::Wgpu>(&fixture, &Default::default())?,
        #[cfg(feature = "cuda")]
        "cuda" => parity::<burn::backend::Cuda>(&fixture, &Default::default())?,
        other => {
            bail!("backend {other:?} is unknown or not compiled in (features: ndarray, wgpu, cuda)")
        }
    };
    let verdict = if error <= tolerance { "PASS" } else { "FAIL" };
    println!(
        "{verdict} {dir} on {backend}: max relative error {error:.3e} (tolerance {tolerance:e}), {:.1} s",
        start.elapsed().as_secs_f32()
    );
    Ok(error <= tolerance)
}
