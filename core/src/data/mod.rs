//! Image–caption datasets for training.
//!
//! # On-disk format
//!
//! A dataset is a directory with two files:
//!
//! - `images.safetensors`: one tensor `images`, u8, shape `[N, H, W, 3]` (RGB, H = W = `size`,
//!   row-major, no alpha: transparent sources are composited on white);
//! - `captions.json`:
//!   ```json
//!   {"name": "emoji", "size": 64,
//!    "items": [{"id": "1f34e", "base": "1f34e", "split": "train",
//!               "captions": ["red apple", "apple", "an emoji of a red apple", "apple, diet, food, fruit"]},
//!              ...]}
//!   ```
//!   `items[i]` describes image `i`; `base` groups an image with its variants (an emoji's skin
//!   tones share their base's id) and `split` is `"train"` or `"heldout"`, fixed when the set is
//!   built. Every item has one or more captions; a trainer samples one per step.
//!
//! It may also hold `preview.png` (a grid of some of the images), which readers ignore.
//! [`save_dir`] writes the directory atomically (a temporary sibling, then a rename);
//! [`load_dir`] reads and validates it. Core code works on bytes ([`Dataset::from_parts`],
//! [`Dataset::to_parts`]); only those two helpers touch the file system.
//!
//! # Builders
//!
//! - [`emoji`]: Noto emoji (npm `emoji-datasource-google`, 64×64 PNGs + `emoji.json`) with
//!   captions from their names and npm `openmoji`'s annotations and tags; held-out groups chosen by
//!   hashing the base's code points.
//! - [`digits`]: scikit-learn's 8×8 handwritten digits (`digits.csv.gz`), black on white,
//!   upscaled; every 10th sample held out.

mod dataset;
pub mod digits;
mod dir;
pub mod emoji;
pub mod pixels;

pub use dataset::{Dataset, Item, Split, Stats, CAPTIONS_FILE, IMAGES_FILE, IMAGES_TENSOR};
pub use dir::{load_dir, save_dir, PREVIEW_FILE};

/// The largest `--size` the builders accept (a guard against absurd allocations).
pub const MAX_SIZE: usize = 1024;

/// FNV-1a, 64 bit: the stable hash that fixes the held-out split.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads every input bit over the whole word. FNV-1a alone changes
/// mostly the top bits when only the last byte differs, so sorting by it keeps such keys
/// ("flag of Sudan", "flag of Slovakia", …) next to each other; sorting by `mix64(fnv1a64(key))`
/// gives an order without such runs.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn check_size(size: usize) -> crate::Result<()> {
    if size == 0 || size > MAX_SIZE {
        return Err(crate::Error::input(format!("image size must be between 1 and {MAX_SIZE}, got {size}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    fn tiny() -> Dataset {
        let items = (0..3)
            .map(|i| Item {
                id: format!("x{i}"),
                base: format!("b{}", i / 2),
                split: if i == 2 { Split::Heldout } else { Split::Train },
                captions: vec![format!("thing {i}"), "a thing".into()],
            })
            .collect();
        Dataset { name: "t".into(), size: 2, images: (0..36).map(|v| (v * 7) as u8).collect(), items }
    }

    #[test]
    fn parts_round_trip_and_pixels() {
        let ds = tiny();
        let (img, cap) = ds.to_parts().unwrap();
        let back = Dataset::from_parts(&img, &cap).unwrap();
        assert_eq!(back, ds);
        assert_eq!(ds.indices(Split::Train), vec![0, 1]);
        assert_eq!(ds.indices(Split::Heldout), vec![2]);
        let px = ds.pixels_nchw(&[2, 0]);
        assert_eq!(px.len(), 2 * 3 * 4);
        // Item 2, channel 0, pixel 0 is byte 24; channel 1, pixel 0 is byte 25.
        assert!((px[0] - (24.0 * 7.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((px[4] - (25.0 * 7.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(px[12], -1.0);
        let s = ds.stats();
        assert_eq!((s.images, s.bases, s.heldout_images, s.heldout_bases), (3, 2, 1, 1));
        let json: serde_json::Value = serde_json::from_slice(&cap).unwrap();
        assert_eq!(json["items"][2]["split"], "heldout");
    }

    #[test]
    fn from_parts_rejects_mismatches() {
        let ds = tiny();
        let (img, cap) = ds.to_parts().unwrap();
        let mut short = ds.clone();
        short.items.pop();
        short.images.truncate(24);
        let (img2, cap2) = short.to_parts().unwrap();
        let err = Dataset::from_parts(&img2, &cap).unwrap_err().to_string();
        assert!(err.contains("shape") && err.contains("[3, 2, 2, 3]"), "{err}");
        assert!(Dataset::from_parts(&img, &cap2).is_err());
        assert!(Dataset::from_parts(b"junk", &cap).unwrap_err().to_string().contains("images.safetensors"));
        assert!(Dataset::from_parts(&img, b"{").unwrap_err().to_string().contains("captions.json"));
        let mut dup = ds.clone();
        dup.items[1].id = "x0".into();
        assert!(dup.to_parts().unwrap_err().to_string().contains("duplicate"));
        let mut nocap = ds.clone();
        nocap.items[0].captions.clear();
        assert!(nocap.to_parts().is_err());
    }
}
