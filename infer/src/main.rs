//! `modernbert`: ModernBERT from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use modernbert::{Backend, ModernBertConfig, Pooling};
use modernbert_infer::npy::write_npy_f32;
use modernbert_infer::{
    bench_encoder, resolve_model, with_backend, BackendKind, BenchOptions, BenchReport,
    BenchSetting, Classifier, DeviceMemory, Dtype, Embedder, FillMask, HubOptions, InferOptions,
    OverLong, TokenClassifier,
};

/// ModernBERT on Burn: run HuggingFace ModernBERT checkpoints on CPU or GPU.
///
/// --model takes a checkpoint directory (config.json, model.safetensors, tokenizer.json) or
/// a HuggingFace hub id such as answerdotai/ModernBERT-base (downloaded into the hub cache;
/// set HF_HUB_OFFLINE=1 to use the cache only). Results are printed as JSON lines, one per
/// input text, in input order.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Predict the most likely tokens for each [MASK] in the given texts.
    ///
    /// Example: modernbert fill-mask --model answerdotai/ModernBERT-base "Paris is the [MASK] of France."
    FillMask(FillMaskArgs),
    /// Turn texts into sentence embeddings (one vector per text).
    ///
    /// Example: modernbert embed --model DIR --input texts.txt --output vectors.npy
    Embed(EmbedArgs),
    /// Classify texts (sequence classification), or each of their tokens (token
    /// classification), with the labels of the checkpoint's id2label.
    ///
    /// Example: modernbert classify --model DIR "I loved this film."
    Classify(ClassifyArgs),
    /// Measure encoder throughput (tokens/s) and device memory on the ModernBERT paper's
    /// four document sets, for random-init base and large models (no checkpoint needed).
    ///
    /// Example: modernbert bench --backend cuda --dtype bf16 --quick
    Bench(BenchArgs),
}

/// Where the model runs and how texts are batched.
#[derive(Args, Debug)]
struct RunArgs {
    /// Where to run: ndarray (CPU), wgpu (Vulkan/Metal/DX12), cuda (NVIDIA).
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    backend: BackendKind,
    /// Float type of weights and activations: f32 (all backends), f16 (wgpu, cuda), bf16 (cuda).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Most tokens per forward pass. Texts are sorted by length and packed under this budget.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
}

/// Texts in, checkpoint, truncation.
#[derive(Args, Debug)]
struct TextArgs {
    /// Checkpoint directory, or a HuggingFace hub id (owner/name).
    #[arg(long)]
    model: String,
    /// Read texts from this file, one per line ("-" for standard input), instead of arguments.
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Texts longer than the model's limit (max_position_embeddings tokens) are cut, with a
    /// warning, or refused with an error.
    #[arg(long, value_enum, default_value_t = OverLong::Truncate)]
    over_long: OverLong,
    /// The texts (or use --input).
    texts: Vec<String>,
}

#[derive(Args, Debug)]
struct FillMaskArgs {
    #[command(flatten)]
    text: TextArgs,
    #[command(flatten)]
    run: RunArgs,
    /// How many candidates to print per [MASK].
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print one JSON object per text instead of a readable list.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PoolingArg {
    /// The [CLS] token's hidden state.
    Cls,
    /// The mean over the text's tokens.
    Mean,
}

#[derive(Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    text: TextArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Pooling. Default: the checkpoint's sentence-transformers config if it has one, else
    /// config.json's classifier_pooling.
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// L2-normalise the vectors (default: as the sentence-transformers config says, else no).
    #[arg(long, overrides_with = "no_normalize")]
    normalize: bool,
    /// Do not L2-normalise, whatever the checkpoint says.
    #[arg(long)]
    no_normalize: bool,
    /// Write here instead of standard output: a .npy file gets a float32 matrix
    /// [texts, hidden]; any other name gets JSON lines.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClassifyTask {
    /// One label per text (ModernBertForSequenceClassification).
    Sequence,
    /// One label per token (ModernBertForTokenClassification).
    Token,
}

#[derive(Args, Debug)]
struct ClassifyArgs {
    #[command(flatten)]
    text: TextArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Sequence or token classification. Default: from config.json's architectures.
    #[arg(long, value_enum)]
    task: Option<ClassifyTask>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModelSize {
    /// ModernBERT-base: 22 layers, hidden 768, 149M parameters.
    Base,
    /// ModernBERT-large: 28 layers, hidden 1024, 395M parameters.
    Large,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Model sizes to run (random-init weights from the presets).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["base", "large"])]
    models: Vec<ModelSize>,
    /// Document sets to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["fixed512", "variable256", "fixed8192", "variable4096"])]
    settings: Vec<BenchSetting>,
    /// Documents per short (512-token) set; the paper uses 8192.
    #[arg(long, default_value_t = 8192)]
    docs: usize,
    /// Documents per long (8192-token) set; the paper uses 8192.
    #[arg(long, default_value_t = 8192)]
    long_docs: usize,
    /// A fast look: 512 short and 32 long documents.
    #[arg(long)]
    quick: bool,
    /// Seed of the document lengths and token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed passes over each document set; the table gives the median pass.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// Write the document lengths as JSON (for scripts/bench_infer_torch.py) and exit.
    #[arg(long)]
    dump_lengths: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn read_texts(args: &TextArgs) -> Result<Vec<String>> {
    let Some(path) = &args.input else {
        if args.texts.is_empty() {
            bail!("no texts: give them as arguments or with --input FILE (- for stdin)");
        }
        return Ok(args.texts.clone());
    };
    let lines: Vec<String> = if path == Path::new("-") {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(String::from)
            .collect()
    };
    if lines.is_empty() {
        bail!("{} holds no lines", path.display());
    }
    Ok(lines)
}

/// Batching options with a progress bar on standard error (hidden when it is not a terminal
/// or the input fits in one batch).
fn infer_options(run: &RunArgs, text: &TextArgs, count: usize) -> InferOptions {
    let options = InferOptions::default()
        .with_max_batch_tokens(run.max_batch_tokens)
        .with_over_long(text.over_long);
    if count < 64 {
        return options;
    }
    let bar = ProgressBar::new(count as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} texts, {per_sec}, eta {eta}")
            .expect("a valid template"),
    );
    options.with_progress(Arc::new(move |done| bar.set_position(done as u64)))
}

fn warn_truncated(truncated: impl Iterator<Item = bool>, max: usize) {
    let cut: Vec<String> = truncated
        .enumerate()
        .filter(|(_, t)| *t)
        .map(|(i, _)| i.to_string())
        .collect();
    if !cut.is_empty() {
        eprintln!(
            "warning: {} text(s) longer than {max} tokens were truncated (inputs {}); \
             use --over-long refuse to get an error instead",
            cut.len(),
            cut.join(", ")
        );
    }
}

fn load_dir(model: &str) -> Result<PathBuf> {
    Ok(resolve_model(model, &HubOptions::from_env())?)
}

fn max_len(dir: &Path) -> Result<usize> {
    Ok(ModernBertConfig::from_file(dir.join("config.json"))?.max_position_embeddings)
}

fn fill_mask<B: Backend>(args: &FillMaskArgs, device: B::Device) -> Result<()> {
    let dir = load_dir(&args.text.model)?;
    let texts = read_texts(&args.text)?;
    let pipeline = FillMask::<B>::from_pretrained(&dir, &device)
        .with_context(|| format!("loading {}", dir.display()))?
        .with_options(infer_options(&args.run, &args.text, texts.len()));
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let outputs = pipeline.predict(&texts, args.top_k)?;
    warn_truncated(outputs.iter().map(|o| o.truncated), max_len(&dir)?);
    let mut out = std::io::stdout().lock();
    for output in outputs {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&output)?)?;
            continue;
        }
        writeln!(out, "{}", output.text)?;
        for (i, candidates) in output.masks.iter().enumerate() {
            let list: Vec<String> = candidates
                .iter()
                .map(|p| format!("{:?} {:.4}", p.token, p.score))
                .collect();
            writeln!(out, "  [MASK] {}: {}", i + 1, list.join(", "))?;
        }
    }
    Ok(())
}

fn embed<B: Backend>(args: &EmbedArgs, device: B::Device) -> Result<()> {
    let dir = load_dir(&args.text.model)?;
    let texts = read_texts(&args.text)?;
    let mut embedder = Embedder::<B>::from_pretrained(&dir, &device)
        .with_context(|| format!("loading {}", dir.display()))?
        .with_options(infer_options(&args.run, &args.text, texts.len()));
    if let Some(pooling) = args.pooling {
        embedder = embedder.with_pooling(match pooling {
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Mean => Pooling::Mean,
        });
    }
    if args.normalize || args.no_normalize {
        embedder = embedder.with_normalize(args.normalize);
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = embedder.embed(&texts)?;
    warn_truncated(embeddings.iter().map(|e| e.truncated), max_len(&dir)?);
    match &args.output {
        Some(path) if path.extension().is_some_and(|e| e == "npy") => {
            let rows: Vec<Vec<f32>> = embeddings.into_iter().map(|e| e.embedding).collect();
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            write_npy_f32(std::io::BufWriter::new(file), &rows)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            write_jsonl(std::io::BufWriter::new(file), &embeddings)?;
        }
        None => write_jsonl(std::io::stdout().lock(), &embeddings)?,
    }
    Ok(())
}

fn write_jsonl<T: serde::Serialize>(mut out: impl Write, items: &[T]) -> Result<()> {
    for item in items {
        writeln!(out, "{}", serde_json::to_string(item)?)?;
    }
    out.flush()?;
    Ok(())
}

fn classify<B: Backend>(args: &ClassifyArgs, device: B::Device) -> Result<()> {
    let dir = load_dir(&args.text.model)?;
    let texts = read_texts(&args.text)?;
    let options = infer_options(&args.run, &args.text, texts.len());
    let task = match args.task {
        Some(task) => task,
        None => {
            let text = std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?;
            let hf: modernbert::HfConfig = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}/config.json", dir.display()))?;
            let token = hf
                .architectures
                .unwrap_or_default()
                .iter()
                .any(|a| a == "ModernBertForTokenClassification");
            if token {
                ClassifyTask::Token
            } else {
                ClassifyTask::Sequence
            }
        }
    };
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max = max_len(&dir)?;
    let out = std::io::stdout().lock();
    match task {
        ClassifyTask::Sequence => {
            let outputs = Classifier::<B>::from_pretrained(&dir, &device)
                .with_context(|| format!("loading {}", dir.display()))?
                .with_options(options)
                .classify(&texts)?;
            warn_truncated(outputs.iter().map(|o| o.truncated), max);
            write_jsonl(out, &outputs)
        }
        ClassifyTask::Token => {
            let outputs = TokenClassifier::<B>::from_pretrained(&dir, &device)
                .with_context(|| format!("loading {}", dir.display()))?
                .with_options(options)
                .classify(&texts)?;
            warn_truncated(outputs.iter().map(|o| o.truncated), max);
            write_jsonl(out, &outputs)
        }
    }
}

fn bench_lengths(args: &BenchArgs) -> Vec<(BenchSetting, Vec<usize>)> {
    let (docs, long_docs) = if args.quick {
        (512, 32)
    } else {
        (args.docs, args.long_docs)
    };
    args.settings
        .iter()
        .map(|&s| {
            (
                s,
                s.lengths(if s.is_long() { long_docs } else { docs }, args.seed),
            )
        })
        .collect()
}

fn bench<B: Backend + DeviceMemory>(args: &BenchArgs, device: B::Device) -> Result<()> {
    let sets = bench_lengths(args);
    let options = BenchOptions {
        max_batch_tokens: args.run.max_batch_tokens,
        warmup_docs: 0,
        repeats: args.repeats as usize,
        seed: args.seed,
    };
    println!(
        "backend {:?}, dtype {}, max {} tokens per batch; memory = the allocator's reserved bytes \
         (CubeCL memory pool, weights included), high-water over the timed passes; seconds: the \
         median of {} timed passes",
        args.run.backend, args.run.dtype, args.run.max_batch_tokens, args.repeats
    );
    println!("| model | setting | docs | tokens | seconds | tokens/s | peak reserved (GiB) |");
    println!("|---|---|---|---|---|---|---|");
    let mut reports: Vec<BenchReport> = Vec::new();
    for &size in &args.models {
        let (name, config) = match size {
            ModelSize::Base => ("base", ModernBertConfig::base()),
            ModelSize::Large => ("large", ModernBertConfig::large()),
        };
        let model = config.init::<B>(&device);
        for (setting, lengths) in &sets {
            let options = BenchOptions {
                warmup_docs: (lengths.len() / 8).max(1),
                ..options
            };
            let report = bench_encoder(&model, name, *setting, lengths, &options, &device)
                .with_context(|| format!("{name} on {}", setting.name()))?;
            let memory = report.peak_reserved_bytes.map_or("–".to_string(), |b| {
                format!("{:.2}", b as f64 / (1u64 << 30) as f64)
            });
            println!(
                "| {name} | {} | {} | {} | {:.2} | {:.0} | {memory} |",
                setting.name(),
                report.docs,
                report.tokens,
                report.seconds,
                report.tokens_per_second
            );
            reports.push(report);
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "backend": format!("{:?}", args.run.backend).to_lowercase(),
            "dtype": args.run.dtype.to_string(),
            "max_batch_tokens": args.run.max_batch_tokens,
            "reports": reports,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn dump_lengths(args: &BenchArgs, path: &Path) -> Result<()> {
    let settings: Vec<serde_json::Value> = bench_lengths(args)
        .into_iter()
        .map(|(s, lengths)| serde_json::json!({"setting": s.name(), "lengths": lengths}))
        .collect();
    let json = serde_json::json!({
        "seed": args.seed,
        "max_batch_tokens": args.run.max_batch_tokens,
        "repeats": args.repeats,
        "settings": settings,
    });
    std::fs::write(path, serde_json::to_string(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::FillMask(args) => with_backend!(args.run.backend, args.run.dtype, |B, device| {
            fill_mask::<B>(&args, device)
        }),
        Command::Embed(args) => with_backend!(args.run.backend, args.run.dtype, |B, device| {
            embed::<B>(&args, device)
        }),
        Command::Classify(args) => with_backend!(args.run.backend, args.run.dtype, |B, device| {
            classify::<B>(&args, device)
        }),
        Command::Bench(args) => {
            if let Some(path) = &args.dump_lengths {
                return dump_lengths(&args, path);
            }
            with_backend!(args.run.backend, args.run.dtype, |B, device| {
                bench::<B>(&args, device)
            })
        }
    }
}
