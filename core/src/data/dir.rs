//! Dataset directories on disk (native only; everything else works on bytes).

use std::path::{Path, PathBuf};

use super::{Dataset, CAPTIONS_FILE, IMAGES_FILE};
use crate::error::{Error, Result};

/// The optional preview grid a dataset directory may hold.
pub const PREVIEW_FILE: &str = "preview.png";

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

/// Reads and validates a dataset directory (`images.safetensors` + `captions.json`).
pub fn load_dir(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Io(format!("dataset directory {} does not exist", dir.display())));
    }
    let images = read(&dir.join(IMAGES_FILE))?;
    let captions = read(&dir.join(CAPTIONS_FILE))?;
    Dataset::from_parts(&images, &captions).map_err(|e| match e {
        Error::Config { path, msg } => Error::Config { path: dir.join(path).display().to_string(), msg },
        Error::Checkpoint { source_name, msg } => {
            Error::Checkpoint { source_name: dir.join(source_name).display().to_string(), msg }
        }
        Error::Input(msg) => Error::Input(format!("{}: {msg}", dir.display())),
        other => other,
    })
}

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dataset".into());
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `dataset` (and `extra` files such as a preview, `(file name, bytes)`) to `dir`,
/// replacing what is there: everything goes to a temporary sibling directory first, which is then
/// renamed, so a failure never leaves a partial dataset behind.
pub fn save_dir(dir: &Path, dataset: &Dataset, extra: &[(&str, Vec<u8>)]) -> Result<()> {
    let (images, captions) = dataset.to_parts()?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    let tmp = sibling(dir, "partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let write_all = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::Io(format!("cannot create {}: {e}", tmp.display())))?;
        let files = [(IMAGES_FILE, &images), (CAPTIONS_FILE, &captions)];
        for (name, bytes) in files.into_iter().chain(extra.iter().map(|(n, b)| (*n, b))) {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    };
    if let Err(e) = write_all() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // An existing target is moved aside first and removed only once the new one is in place.
    let old = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::Io(format!("cannot replace {}: {e}", dir.display())));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Io(format!("cannot move the dataset to {}: {e}", dir.display())));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
