//! `modernbert`: ModernBERT from the command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use modernbert::Backend;
use modernbert_infer::{with_backend, BackendKind, FillMask};

/// ModernBERT on Burn: run HuggingFace ModernBERT checkpoints on CPU or GPU.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Predict the most likely tokens for each [MASK] in the given texts.
    ///
    /// Example: modernbert fill-mask --model ./ModernBERT-base "Paris is the [MASK] of France."
    FillMask(FillMaskArgs),
}

#[derive(clap::Args, Debug)]
struct FillMaskArgs {
    /// Checkpoint directory: config.json, model.safetensors (or a sharded index), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    backend: BackendKind,
    /// How many candidates to print per [MASK].
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print one JSON object per text instead of a table.
    #[arg(long)]
    json: bool,
    /// Texts, each with at least one [MASK].
    #[arg(required = true)]
    texts: Vec<String>,
}

fn fill_mask<B: Backend>(args: &FillMaskArgs, device: B::Device) -> Result<()> {
    let pipeline = FillMask::<B>::from_pretrained(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    for output in pipeline.predict(&texts, args.top_k)? {
        if args.json {
            println!("{}", serde_json::to_string(&output)?);
            continue;
        }
        println!("{}", output.text);
        for (i, candidates) in output.masks.iter().enumerate() {
            let list: Vec<String> = candidates
                .iter()
                .map(|p| format!("{:?} {:.4}", p.token, p.score))
                .collect();
            println!("  [MASK] {}: {}", i + 1, list.join(", "));
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::FillMask(args) => {
            with_backend!(args.backend, |B, device| fill_mask::<B>(&args, device))
        }
    }
}
