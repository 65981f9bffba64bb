//! `rfgen-cli data emoji|digits`: build image–caption datasets (see rfgen_core::data).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rfgen_core::data::{self, pixels, Dataset, PREVIEW_FILE};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    kind: DataKind,
}

#[derive(Subcommand, Debug)]
enum DataKind {
    /// Noto emoji (npm emoji-datasource-google) with captions from their names and OpenMoji's
    /// annotations and tags; skin-tone variants included; a fixed held-out split (~10% of bases).
    Emoji(EmojiArgs),
    /// scikit-learn's 8x8 handwritten digits, black on white, upscaled; every 10th held out.
    Digits(DigitsArgs),
}

#[derive(Args, Debug)]
struct EmojiArgs {
    /// Output dataset directory (images.safetensors, captions.json, preview.png).
    #[arg(long)]
    out: PathBuf,
    /// Image side in pixels (64 = Noto's images as they are; smaller = area average).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// node_modules holding emoji-datasource-google and openmoji
    /// [default: $RFGEN_NPM or ~/.cache/rfgen/npm/node_modules, filled by ./build.sh setup].
    #[arg(long)]
    source: Option<PathBuf>,
    /// Replace an existing directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct DigitsArgs {
    /// Output dataset directory (images.safetensors, captions.json, preview.png).
    #[arg(long)]
    out: PathBuf,
    /// Image side in pixels (the 8x8 digits are upscaled bilinearly).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// digits.csv.gz, or a directory holding it
    /// [default: $RFGEN_DIGITS or ~/.cache/rfgen/digits, filled by ./build.sh setup].
    #[arg(long)]
    source: Option<PathBuf>,
    /// Replace an existing directory.
    #[arg(long)]
    force: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.kind {
        DataKind::Emoji(a) => emoji(a),
        DataKind::Digits(a) => digits(a),
    }
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/rfgen")
}

fn default_source(env: &str, sub: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => cache_dir().join(sub),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!("{} already exists (use --force to replace it)", out.display());
    }
    Ok(())
}

fn package_version(dir: &Path) -> String {
    std::fs::read(dir.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Up to `max` images spread evenly over the set, as a PNG grid.
fn preview(ds: &Dataset, max: usize, cols: usize) -> Result<Vec<u8>> {
    let n = ds.len().min(max);
    let picks: Vec<&[u8]> = (0..n).map(|k| ds.image(k * ds.len() / n)).collect();
    Ok(pixels::encode_png_rgb(&pixels::grid(&picks, ds.size, cols, 2))?)
}

fn save(out: &Path, ds: &Dataset) -> Result<()> {
    let grid = preview(ds, 256, 16)?;
    data::save_dir(out, ds, &[(PREVIEW_FILE, grid)])?;
    Ok(())
}

fn emoji(a: EmojiArgs) -> Result<()> {
    check_out(&a.out, a.force)?;
    build_emoji(&a.out, a.size, a.source.clone())
}

/// The emoji set commands use when no --data is given: `$RFGEN_DATA`, else ~/.cache/rfgen/emoji,
/// built there (under a second) from the npm packages `./build.sh setup` fetched when missing.
pub fn default_emoji_dir() -> Result<PathBuf> {
    let dir = default_source("RFGEN_DATA", "emoji");
    if !dir.join("captions.json").is_file() {
        // Never replace a directory that holds something else.
        if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
            bail!("{} is not a dataset (no captions.json) and not empty; pass --data DIR or set RFGEN_DATA", dir.display());
        }
        eprintln!("no --data given: building the emoji dataset in {}", dir.display());
        let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        build_emoji(&tmp, 64, None)?;
        let _ = std::fs::remove_dir(&dir);
        std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(dir)
}

fn build_emoji(out: &Path, size: usize, source: Option<PathBuf>) -> Result<()> {
    let t0 = Instant::now();
    let source = source.unwrap_or_else(|| default_source("RFGEN_NPM", "npm/node_modules"));
    let ds_dir = source.join("emoji-datasource-google");
    let emoji_json = ds_dir.join("emoji.json");
    let om_dir = source.join("openmoji");
    let om_json = om_dir.join("data/openmoji.json");
    for (what, path) in [("emoji-datasource-google", &emoji_json), ("openmoji", &om_json)] {
        if !path.is_file() {
            bail!(
                "{what} not found: {} is missing; run `./build.sh setup` to fetch the npm packages \
                 (or pass --source DIR / set RFGEN_NPM to a node_modules holding them)",
                path.display()
            );
        }
    }
    let image_dir = ds_dir.join("img/google/64");
    if !image_dir.is_dir() {
        bail!(
            "{} is missing; run `./build.sh setup` (emoji-datasource-google without its images?)",
            image_dir.display()
        );
    }
    let (ej, oj) = (read(&emoji_json)?, read(&om_json)?);
    let (ej_name, oj_name, img_name) =
        (emoji_json.display().to_string(), om_json.display().to_string(), image_dir.display().to_string());
    let src = data::emoji::Sources {
        emoji_json: &ej,
        emoji_json_name: &ej_name,
        openmoji_json: Some(&oj),
        openmoji_json_name: &oj_name,
        image_dir_name: &img_name,
    };
    let built = data::emoji::build(&src, size, |file| {
        let path = image_dir.join(file);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(rfgen_core::Error::Io(format!("cannot read {}: {e}", path.display()))),
        }
    })?;
    save(out, &built.dataset)?;
    eprintln!(
        "wrote {} (emoji-datasource-google {}, openmoji {}, {}x{}): {}; skipped {} without an image; {:.1} s",
        out.display(),
        package_version(&ds_dir),
        package_version(&om_dir),
        size,
        size,
        built.dataset.stats(),
        built.skipped.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn digits(a: DigitsArgs) -> Result<()> {
    let t0 = Instant::now();
    check_out(&a.out, a.force)?;
    let source = a.source.clone().unwrap_or_else(|| default_source("RFGEN_DIGITS", "digits"));
    let file = if source.is_dir() { source.join("digits.csv.gz") } else { source };
    if !file.is_file() {
        bail!(
            "scikit-learn digits not found: {} is missing; run `./build.sh setup` to fetch it \
             (or pass --source FILE / set RFGEN_DIGITS)",
            file.display()
        );
    }
    let ds = data::digits::from_csv(&file.display().to_string(), &read(&file)?, a.size)?;
    save(&a.out, &ds)?;
    eprintln!(
        "wrote {} (digits, {}x{}, black on white): {}; {:.1} s",
        a.out.display(),
        a.size,
        a.size,
        ds.stats(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
