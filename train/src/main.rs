//! `modernbert-train`: pretrain ModernBERT with masked language modelling.

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, ValueEnum};
use modernbert_infer::{with_backend, BackendKind};
use modernbert_train::{breakdown, train, BreakdownOptions, TrainConfig};

/// Pretrain a ModernBERT from scratch with MLM (the FlexBERT recipe) and export it in
/// HuggingFace format.
///
/// Example: modernbert-train --config run.toml --set data.train='["corpus/*.txt"]' --backend cuda --dtype bf16
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config (sections [data], [model], [optimizer], [schedule], [run]; every key
    /// optional, see train/README.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set schedule.total_steps=500`; repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Training files or globs (replaces data.train).
    #[arg(long)]
    data: Vec<String>,
    /// Output directory (replaces run.output_dir).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Stop after this many minutes of this invocation, with a checkpoint and an export
    /// (replaces run.max_minutes); `--resume` continues.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Continue from a checkpoint directory, or from the newest checkpoint of an output
    /// directory; its stored config is used (except the output directory).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    backend: BackendKind,
    /// Float type of weights and compute: bf16 needs --backend cuda.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Do not train: build the run's model and first batch, time each part of one training
    /// step (device sync around each) and print a markdown table to stdout.
    #[arg(long, conflicts_with = "resume")]
    breakdown: bool,
    /// Timed runs of each part with --breakdown (the table gives the median), after 2
    /// untimed ones.
    #[arg(long, default_value_t = 10, requires = "breakdown")]
    breakdown_repeats: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut overrides = cli.overrides.clone();
    if !cli.data.is_empty() {
        let list: Vec<String> = cli.data.iter().map(|p| format!("{p:?}")).collect();
        overrides.push(format!("data.train=[{}]", list.join(", ")));
    }
    if let Some(dir) = &cli.output_dir {
        overrides.push(format!("run.output_dir={:?}", dir.display().to_string()));
    }
    if let Some(minutes) = cli.max_minutes {
        overrides.push(format!("run.max_minutes={minutes:?}"));
    }
    let config = match &cli.resume {
        // On resume the checkpoint's config rules; only the output directory and the time
        // limit may change.
        Some(_) => {
            if cli.config.is_some() || !cli.overrides.is_empty() || !cli.data.is_empty() {
                anyhow::bail!(
                    "--resume uses the checkpoint's config: drop --config, --set and --data"
                );
            }
            TrainConfig {
                run: modernbert_train::config::RunConfig {
                    output_dir: cli.output_dir.clone().unwrap_or_default(),
                    max_minutes: cli.max_minutes.unwrap_or(0.0),
                    ..Default::default()
                },
                ..Default::default()
            }
        }
        None => TrainConfig::load(cli.config.as_deref(), &overrides)?,
    };
    match (cli.dtype, cli.backend) {
        (Dtype::F32, kind) => with_backend!(kind, |B, device| {
            run::<Autodiff<B>>(&cli, config, &device)
        }),
        (Dtype::Bf16, BackendKind::Cuda) => {
            #[cfg(feature = "cuda")]
            {
                let device = Default::default();
                run::<Autodiff<burn::backend::Cuda<half::bf16>>>(&cli, config, &device)
            }
            #[cfg(not(feature = "cuda"))]
            anyhow::bail!(
                "this binary was built without the `cuda` feature; rebuild with `--features cuda`"
            )
        }
        (Dtype::Bf16, other) => {
            anyhow::bail!("--dtype bf16 needs --backend cuda (got {other:?}); use f32 there")
        }
    }
}

/// Trains, or with `--breakdown` prints the step's timing breakdown.
fn run<B>(cli: &Cli, config: TrainConfig, device: &B::Device) -> Result<()>
where
    B: AutodiffBackend + modernbert::Backend,
    B::InnerBackend: modernbert::Backend,
{
    if cli.breakdown {
        let options = BreakdownOptions {
            repeats: cli.breakdown_repeats,
            ..BreakdownOptions::default()
        };
        print!("{}", breakdown::<B>(config, options, device)?.to_markdown());
        return Ok(());
    }
    train::<B>(config, cli.resume.as_deref(), device).map(drop)
}
