use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, View};

/// An f32 tensor to be written to a safetensors file.
pub struct Named {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

struct F32View<'a>(&'a Named);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// `models/NAME` of the repository this binary was built from (the shipped default model and proxy
/// scorer), without the `cli/..` detour where the folder exists.
pub fn repo_model_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models").join(name);
    dir.canonicalize().unwrap_or(dir)
}

/// Writes the tensors atomically (temporary file, then rename).
pub fn write_safetensors(path: &Path, tensors: &[Named]) -> Result<()> {
    let views = tensors.iter().map(|t| (t.name.clone(), F32View(t)));
    let bytes = safetensors::serialize(views, None).context("serializing the dump")?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a hidden temporary file beside `path`, then renames it into place: readers
/// see the old file or the new one, never half of one. A failed write (a full disk) leaves nothing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads `z0` from a safetensors file: `[c, h, w]` (repeated for every prompt) or `[n, c, h, w]`.
pub fn read_noise(path: &Path, prompts: usize) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read noise file {}", path.display()))?;
    let weights = rfgen_core::checkpoint::Weights::from_safetensors(&path.display().to_string(), bytes)?;
    let Some(shape) = weights.shape("z0").map(<[usize]>::to_vec) else {
        bail!("noise file {} has no tensor named z0", path.display());
    };
    let data = match weights.read_f32("z0").expect("present") {
        Ok(v) => v,
        Err(dtype) => bail!("noise z0 in {} has dtype {dtype}; expected a float type", path.display()),
    };
    if data.iter().any(|x| !x.is_finite()) {
        bail!("noise z0 in {} contains NaN or infinite values", path.display());
    }
    match shape.as_slice() {
        [c, h, w] => Ok((vec![prompts, *c, *h, *w], data.repeat(prompts))),
        [n, _, _, _] if *n == prompts => Ok((shape, data)),
        [n, _, _, _] => bail!("noise z0 holds {n} latents for {prompts} prompt(s)"),
        other => bail!("noise z0 has shape {other:?}; expected [c, h, w] or [n, c, h, w]"),
    }
}

/// `out.png` for one image, `out-0.png, out-1.png, ...` for several.
pub fn png_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..n).map(|i| out.with_file_name(format!("{stem}-{i}.{ext}"))).collect()
}

/// Refuses, before any work is done, an output that could not be written at the end: a folder
/// that does not exist, a path that is a folder, or (with `ext`) another file type.
pub fn check_output(flag: &str, path: &Path, ext: Option<&str>) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a directory; give a file name", path.display());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{flag} {}: the folder {} does not exist", path.display(), parent.display());
    }
    if let Some(ext) = ext {
        let given = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !given.eq_ignore_ascii_case(ext) {
            bail!("{flag} {}: rfgen writes .{ext} files; name the output FILE.{ext}", path.display());
        }
    }
    Ok(())
}

pub fn write_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("png header")?;
        writer.write_image_data(rgb).context("png data")?;
    }
    write_atomic(path, &buf)
}

/// Images `[n][H*W*3]` side by side in a grid of `cols` columns.
pub fn grid(images: &[Vec<u8>], width: usize, height: usize, cols: usize) -> (Vec<u8>, usize, usize) {
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (cols * width, rows * height);
    let mut out = vec![255u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % cols) * width, (i / cols) * height);
        for y in 0..height {
            let dst = ((oy + y) * gw + ox) * 3;
            out[dst..dst + width * 3].copy_from_slice(&img[y * width * 3..(y + 1) * width * 3]);
        }
    }
    (out, gw, gh)
}

#[cfg(test)]
mod tests {
    use super::write_atomic;

    #[test]
    fn atomic_write_replaces_and_a_failed_one_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("rfgen-write-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.json");
        write_atomic(&file, b"old").unwrap();
        write_atomic(&file, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");

        // Renaming onto a non-empty directory fails after the bytes were written.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let err = write_atomic(&blocked, b"x").unwrap_err();
        assert!(format!("{err:#}").contains("blocked"), "{err:#}");
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["a.json", "blocked"], "a failed write left a temporary file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
