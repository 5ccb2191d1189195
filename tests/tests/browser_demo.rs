//! The browser demo end to end (`web-demo/`): builds it for wasm32 (`web-demo/build.sh`),
//! computes fill-mask of a committed fixture natively on NdArray, then drives the page in
//! Debian's headless Chromium (`web-demo/tests/e2e.mjs`, playwright-core) on WebGPU
//! (SwiftShader here) and on the wasm CPU fallback: every top-5 score must match the native
//! one to 1e-3, the page must report the dtype its adapter allows, and a checkpoint of another
//! task must be refused with a message naming the missing keys. Saves
//! `web-demo/screenshot.png`.
//!
//! Needs Chromium, Node.js with npm, the wasm32 target and the pinned wasm-bindgen CLI;
//! without one the test fails and names the command that installs it (`web-demo/tools.sh`;
//! `.ci/run` installs them). `web-demo/e2e.sh` runs this test alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use burn::backend::NdArray;
use modernbert_infer::FillMask;
use modernbert_tests::fixtures_dir;

/// Over 17 tokens, so the fixture's sliding-window layers (local_attention 16) cut real keys.
const TEXT: &str = "The European lobster is a species of [MASK] lobster from the eastern Atlantic \
                    Ocean, the Mediterranean Sea and parts of the Black Sea.";

fn web_demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-demo")
}

/// Runs `command` in `web-demo/`, its output going to the test's; fails with `what` and the
/// exit status.
fn run(what: &str, command: &mut Command) -> Result<()> {
    let status = command
        .current_dir(web_demo())
        .status()
        .with_context(|| format!("{what}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {command:?}");
    }
    Ok(())
}

#[test]
fn fill_mask_in_headless_chromium_matches_native_ndarray() -> Result<()> {
    let tools = Command::new("bash")
        .arg("tools.sh")
        .current_dir(web_demo())
        .output()
        .context("running web-demo/tools.sh")?;
    if !tools.status.success() {
        bail!(
            "the browser test needs tools this machine lacks (`web-demo/tools.sh --install` \
             installs them all):\n{}",
            String::from_utf8_lossy(&tools.stderr)
        );
    }
    run(
        "building the demo (web-demo/build.sh)",
        Command::new("bash").arg("build.sh"),
    )?;
    if !web_demo().join("node_modules/playwright-core").is_dir() {
        run(
            "installing playwright-core (npm ci)",
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]),
        )?;
    }

    let model = fixtures_dir().join("mlm_tied_present_f16");
    let native = FillMask::<NdArray>::from_pretrained(&model, &Default::default())?
        .predict(&[TEXT], 5)?
        .remove(0);
    let native_file = tempfile::NamedTempFile::new()?;
    std::fs::write(native_file.path(), serde_json::to_string(&native)?)?;
    run(
        "fill-mask in headless Chromium vs native NdArray (web-demo/tests/e2e.mjs)",
        Command::new("node")
            .arg("tests/e2e.mjs")
            .arg("--model")
            .arg(&model)
            .arg("--native")
            .arg(native_file.path())
            .args(["--text", TEXT, "--screenshot", "screenshot.png"]),
    )?;
    // A sequence-classification checkpoint is no masked-LM one: the page names the keys.
    run(
        "refusing a checkpoint of another task (web-demo/tests/e2e.mjs)",
        Command::new("node")
            .arg("tests/e2e.mjs")
            .arg("--model")
            .arg(fixtures_dir().join("seqcls_cls_v5"))
            .args([
                "--text",
                TEXT,
                "--expect-error",
                r"missing keys .*decoder\.bias",
            ]),
    )
}
