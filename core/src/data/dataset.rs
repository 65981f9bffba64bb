//! The in-memory dataset and its two on-disk parts (see the module doc of [`crate::data`]).

use std::collections::BTreeSet;

use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Images with their captions: `images` holds `N` RGB8 images `[H, W, 3]` (H = W = `size`)
/// one after the other, in the order of `items`.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub size: usize,
    /// `N * size * size * 3` bytes, `[N, H, W, 3]`.
    pub images: Vec<u8>,
    pub items: Vec<Item>,
}

/// One image: its id, the id of its base (an emoji's skin-tone variants share their base's), its
/// split, and one or more captions (a trainer samples one per step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub base: String,
    pub split: Split,
    pub captions: Vec<String>,
}

/// `"train"` or `"heldout"` in captions.json.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

/// captions.json.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionsFile {
    name: String,
    size: usize,
    items: Vec<Item>,
}

/// The name of the only tensor of images.safetensors.
pub const IMAGES_TENSOR: &str = "images";
/// The two files of a dataset directory.
pub const IMAGES_FILE: &str = "images.safetensors";
pub const CAPTIONS_FILE: &str = "captions.json";

struct U8View<'a> {
    shape: Vec<usize>,
    data: &'a [u8],
}

impl View for U8View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::U8
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.data.into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Counts that describe a dataset (what `rfgen-cli data` prints).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub images: usize,
    pub bases: usize,
    pub heldout_images: usize,
    pub heldout_bases: usize,
    pub captions_mean: f64,
    pub captions_min: usize,
    pub captions_max: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        write!(
            f,
            "{} images of {} bases; held out: {} bases ({:.2}%), {} images ({:.2}%); captions per image: mean {:.2}, min {}, max {}",
            self.images,
            self.bases,
            self.heldout_bases,
            pct(self.heldout_bases, self.bases),
            self.heldout_images,
            pct(self.heldout_images, self.images),
            self.captions_mean,
            self.captions_min,
            self.captions_max
        )
    }
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("images", &format_args!("[{} bytes]", self.images.len()))
            .field("items", &self.items.len())
            .finish()
    }
}

impl Dataset {
    /// Checks the invariants: a name, a positive size, `N * size * size * 3` image bytes for the
    /// `N` items, unique ids, and at least one non-empty caption per item.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::input("dataset has an empty name"));
        }
        if self.size == 0 {
            return Err(Error::input("dataset image size is 0"));
        }
        let per = self.image_len();
        if self.images.len() != self.items.len() * per {
            return Err(Error::input(format!(
                "dataset {}: {} image bytes for {} items of {}x{}x3 (expected {})",
                self.name,
                self.images.len(),
                self.items.len(),
                self.size,
                self.size,
                self.items.len() * per
            )));
        }
        let mut ids = BTreeSet::new();
        for item in &self.items {
            if item.id.is_empty() || item.base.is_empty() {
                return Err(Error::input(format!("dataset {}: an item has an empty id or base", self.name)));
            }
            if !ids.insert(item.id.as_str()) {
                return Err(Error::input(format!("dataset {}: duplicate item id {}", self.name, item.id)));
            }
            if item.captions.is_empty() || item.captions.iter().any(|c| c.trim().is_empty()) {
                return Err(Error::input(format!(
                    "dataset {}: item {} has no caption or an empty one",
                    self.name, item.id
                )));
            }
        }
        Ok(())
    }

    /// Reads the two parts (the bytes of images.safetensors and captions.json) and validates them:
    /// the `images` tensor must be u8 `[N, size, size, 3]` with `N` = the number of items.
    pub fn from_parts(images_safetensors: &[u8], captions_json: &[u8]) -> Result<Self> {
        let captions: CaptionsFile =
            serde_json::from_slice(captions_json).map_err(|e| Error::config(CAPTIONS_FILE, e))?;
        let st = SafeTensors::deserialize(images_safetensors)
            .map_err(|e| Error::checkpoint(IMAGES_FILE, format!("not a valid safetensors file: {e}")))?;
        let t = st
            .tensor(IMAGES_TENSOR)
            .map_err(|_| Error::checkpoint(IMAGES_FILE, format!("no tensor named {IMAGES_TENSOR}")))?;
        if t.dtype() != Dtype::U8 {
            return Err(Error::checkpoint(IMAGES_FILE, format!("{IMAGES_TENSOR} is {:?}, expected U8", t.dtype())));
        }
        let shape = t.shape();
        let want = [captions.items.len(), captions.size, captions.size, 3];
        if shape != want {
            return Err(Error::checkpoint(
                IMAGES_FILE,
                format!(
                    "{IMAGES_TENSOR} has shape {shape:?}, expected {want:?} ({} items of size {} in {CAPTIONS_FILE})",
                    captions.items.len(),
                    captions.size
                ),
            ));
        }
        let ds = Dataset { name: captions.name, size: captions.size, images: t.data().to_vec(), items: captions.items };
        ds.validate()?;
        Ok(ds)
    }

    /// The two parts: (images.safetensors, captions.json), after validation.
    pub fn to_parts(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        self.validate()?;
        let view = U8View { shape: vec![self.items.len(), self.size, self.size, 3], data: &self.images };
        let images = safetensors::serialize([(IMAGES_TENSOR, view)], None)
            .map_err(|e| Error::Io(format!("cannot serialize {IMAGES_FILE}: {e}")))?;
        let file = CaptionsFile { name: self.name.clone(), size: self.size, items: self.items.clone() };
        let mut captions = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Io(format!("cannot serialize {CAPTIONS_FILE}: {e}")))?;
        captions.push(b'\n');
        Ok((images, captions))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The indices of the items in `split`, in order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        self.items.iter().enumerate().filter(|(_, it)| it.split == split).map(|(i, _)| i).collect()
    }

    /// The items of `split` grouped by base (a base's skin-tone variants together), bases in order
    /// of their first item, items in order.
    pub fn base_groups(&self, split: Split) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut slot = std::collections::HashMap::new();
        for i in self.indices(split) {
            let g = *slot.entry(self.items[i].base.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }

    /// Bytes per image (`size * size * 3`).
    pub fn image_len(&self) -> usize {
        self.size * self.size * 3
    }

    /// Image `i` as RGB8 `[H, W, 3]`. Panics when `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Images as f32 in [-1, 1] (`x / 127.5 - 1`), layout `[n, 3, H, W]` (NCHW), for the given
    /// indices in their order. Panics on an index `>= len()`.
    pub fn pixels_nchw(&self, indices: &[usize]) -> Vec<f32> {
        let images: Vec<&[u8]> = indices.iter().map(|&i| self.image(i)).collect();
        super::pixels::rgb8_to_nchw(&images, self.size)
    }

    /// Images, distinct bases, how many of each are held out, captions per image.
    pub fn stats(&self) -> Stats {
        let bases: BTreeSet<&str> = self.items.iter().map(|i| i.base.as_str()).collect();
        let held_bases: BTreeSet<&str> =
            self.items.iter().filter(|i| i.split == Split::Heldout).map(|i| i.base.as_str()).collect();
        let counts: Vec<usize> = self.items.iter().map(|i| i.captions.len()).collect();
        Stats {
            images: self.items.len(),
            bases: bases.len(),
            heldout_images: self.items.iter().filter(|i| i.split == Split::Heldout).count(),
            heldout_bases: held_bases.len(),
            captions_mean: counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64,
            captions_min: counts.iter().copied().min().unwrap_or(0),
            captions_max: counts.iter().copied().max().unwrap_or(0),
        }
    }
}
