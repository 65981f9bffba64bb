//! rfgen-cli: a thin shell over rfgen-core.

mod bench;
mod compare;
mod encode;
mod eval;
mod eval_loss;
mod eval_vae;
mod convert;
mod data;
mod index_captions;
mod init;
mod inspect;
mod models;
mod output;
mod progress;
mod sample;
mod train;
mod train_vae;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rfgen-cli", version, about = "LLM-prior rectified-flow text-to-image (JanusFlow) on CPU, wgpu and CUDA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images (or final latents) from prompts.
    Sample(sample::SampleArgs),
    /// List the presets with their parameter counts per component.
    Models,
    /// Write a randomly initialised preset as a model directory.
    Init(init::InitArgs),
    /// Convert a checkpoint to rfgen's layout: dtype, int8/int4 weights, shards, manifest.
    Convert(convert::ConvertArgs),
    /// Show a checkpoint's config, tensors, sizes, quantization and validation result.
    Inspect(inspect::InspectArgs),
    /// Sample two models with the same prompts and noise; report latent differences and PSNR.
    Compare(compare::CompareArgs),
    /// Time generation: s/image, steps/s, the split by component, FLOP and TFLOP/s, JSON.
    Bench(bench::BenchArgs),
    /// Train a generator (rectified flow) on a dataset; checkpoints, resume, EMA, sample grids.
    Train(train::TrainArgs),
    /// Train a small diffusers AutoencoderKL (VAE) on a dataset; exports config.json + safetensors.
    TrainVae(train_vae::TrainVaeArgs),
    /// Pre-encode a dataset's images to flow latents with a VAE (DATA/latents.safetensors).
    EncodeLatents(encode::EncodeArgs),
    /// Build an image–caption training set (emoji, digits) from the packages `./build.sh setup` fetches.
    Data(data::DataArgs),
    /// Index a dataset's training captions for a model's neighbour guidance (MODEL/neighbours.safetensors).
    IndexCaptions(index_captions::IndexCaptionsArgs),
    /// Evaluation with the PROXY image–text scorer (not CLIP): `eval proxy-clip-train`, `eval proxy-clip`.
    Eval(eval::EvalArgs),
}

fn main() -> ExitCode {
    // A panic is a bug; still, report it on one line rather than a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        eprintln!("error: internal failure: {}", msg.lines().next().unwrap_or(""));
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => sample::run(args),
        Command::Models => models::run(),
        Command::Init(args) => init::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Train(args) => train::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Data(args) => data::run(args),
        Command::Eval(args) => eval::run(args),
        Command::IndexCaptions(args) => index_captions::run(args),
        Command::TrainVae(args) => train_vae::run(args),
        Command::EncodeLatents(args) => encode::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
