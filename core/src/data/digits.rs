//! The digits set: scikit-learn's bundled 8×8 handwritten digits (`sklearn/datasets/data/
//! digits.csv.gz`: 1797 rows of 64 pixel values 0..16, then the label).
//!
//! Images are drawn **black on white** (value `v` → gray `255 - round(v * 255 / 16)`), upscaled
//! bilinearly (half-pixel centres, edges clamped) to the requested size, RGB with three equal
//! channels. Ids are the row numbers (`"0000"`, …; each sample is its own base). Captions: "a
//! handwritten digit seven", "the digit 7", "handwritten 7", "the number seven". Every 10th
//! sample (rows 0, 10, 20, …) is held out.

use std::io::Read;

use super::pixels::{resize_bilinear, Rgb};
use super::{check_size, Dataset, Item, Split};
use crate::error::{Error, Result};

pub const WORDS: [&str; 10] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// One sample: pixel values 0..=16, row-major 8×8, and the label 0..=9.
#[derive(Clone, Debug, PartialEq)]
pub struct Digit {
    pub pixels: [u8; 64],
    pub label: u8,
}

/// The captions of a digit.
pub fn captions(label: u8) -> Vec<String> {
    let w = WORDS[label as usize];
    vec![
        format!("a handwritten digit {w}"),
        format!("the digit {label}"),
        format!("handwritten {label}"),
        format!("the number {w}"),
    ]
}

/// Whether sample `i` is held out (every 10th: 0, 10, 20, …).
pub fn is_heldout(i: usize) -> bool {
    i % 10 == 0
}

/// Parses digits.csv (gzip-compressed or plain): 65 comma-separated numbers a line. `name`
/// labels errors.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Vec<Digit>> {
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut s)
            .map_err(|e| Error::input(format!("{name}: not a readable gzip file: {e}")))?;
        s
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::input(format!("{name}: not text (nor gzip)")))?
    };
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: String| Error::input(format!("{name}: line {}: {msg}", n + 1));
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != 65 {
            return Err(bad(format!("{} values, expected 65 (64 pixels and the label)", values.len())));
        }
        let num = |s: &str, max: f64| -> Result<u8> {
            let v: f64 = s.parse().map_err(|_| bad(format!("{s:?} is not a number")))?;
            if !(0.0..=max).contains(&v) || v.fract() != 0.0 {
                return Err(bad(format!("{s} is not an integer in 0..={max}")));
            }
            Ok(v as u8)
        };
        let mut pixels = [0u8; 64];
        for (p, s) in pixels.iter_mut().zip(&values[..64]) {
            *p = num(s, 16.0)?;
        }
        out.push(Digit { pixels, label: num(values[64], 9.0)? });
    }
    if out.is_empty() {
        return Err(Error::input(format!("{name}: no samples")));
    }
    Ok(out)
}

/// An 8×8 digit as a black-on-white RGB image of `size × size`.
pub fn render(d: &Digit, size: usize) -> Rgb {
    let data = d
        .pixels
        .iter()
        .flat_map(|&v| {
            let g = 255 - ((v as u32 * 255 + 8) / 16) as u8;
            [g, g, g]
        })
        .collect();
    resize_bilinear(&Rgb { width: 8, height: 8, data }, size)
}

/// The dataset of `samples` at `size`.
pub fn build(samples: &[Digit], size: usize) -> Result<Dataset> {
    check_size(size)?;
    let mut images = Vec::with_capacity(samples.len() * size * size * 3);
    let mut items = Vec::with_capacity(samples.len());
    let width = samples.len().saturating_sub(1).to_string().len().max(4);
    for (i, d) in samples.iter().enumerate() {
        images.extend_from_slice(&render(d, size).data);
        let id = format!("{i:0width$}");
        items.push(Item {
            id: id.clone(),
            base: id,
            split: if is_heldout(i) { Split::Heldout } else { Split::Train },
            captions: captions(d.label),
        });
    }
    let ds = Dataset { name: "digits".into(), size, images, items };
    ds.validate()?;
    Ok(ds)
}

/// [`parse`] then [`build`].
pub fn from_csv(name: &str, bytes: &[u8], size: usize) -> Result<Dataset> {
    build(&parse(name, bytes)?, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(rows: &[(u8, u8)]) -> String {
        rows.iter()
            .map(|&(v, label)| {
                let mut vals: Vec<String> =
                    (0..64).map(|i| if i % 9 == 0 { v.to_string() } else { "0".into() }).collect();
                vals.push(label.to_string());
                vals.join(",")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn parses_plain_and_gzip_and_builds() {
        let rows: Vec<(u8, u8)> = (0..12).map(|i| (16, (i % 10) as u8)).collect();
        let text = csv(&rows);
        let mut gz = vec![];
        {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
            enc.write_all(text.as_bytes()).unwrap();
            enc.finish().unwrap();
        }
        let a = parse("d.csv", text.as_bytes()).unwrap();
        let b = parse("d.csv.gz", &gz).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 12);
        assert_eq!(a[7].label, 7);
        let ds = build(&a, 32).unwrap();
        assert_eq!(ds.len(), 12);
        assert_eq!(ds.size, 32);
        assert_eq!(ds.indices(Split::Heldout), vec![0, 10]);
        assert_eq!(ds.items[7].captions[0], "a handwritten digit seven");
        assert_eq!(ds.items[7].captions[1], "the digit 7");
        assert_eq!(ds.items[7].captions[2], "handwritten 7");
        assert_eq!(ds.items[3].id, "0003");
        // Ink (16) at pixel (0,0) → black; background → white.
        let img = ds.image(0);
        assert_eq!(&img[..3], &[0, 0, 0]);
        assert_eq!(&img[(31 * 32 + 16) * 3..(31 * 32 + 16) * 3 + 3], &[255, 255, 255]);
        let at8 = build(&a, 8).unwrap();
        assert_eq!(at8.image(0)[0], 0);
        assert_eq!(at8.image(0)[3], 255);
    }

    #[test]
    fn bad_rows_name_the_file_and_line() {
        let err = parse("digits.csv", b"1,2,3\n").unwrap_err().to_string();
        assert!(err.contains("digits.csv: line 1") && err.contains("65"), "{err}");
        let mut row = csv(&[(16, 3)]);
        row = row.replacen("16", "17", 1);
        let err = parse("digits.csv", row.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("0..=16"), "{err}");
        let err = parse("digits.csv.gz", &[0x1f, 0x8b, 0, 1, 2]).unwrap_err().to_string();
        assert!(err.contains("digits.csv.gz"), "{err}");
        assert!(parse("e.csv", b"\n").is_err());
        assert!(build(&parse("d", csv(&[(1, 1)]).as_bytes()).unwrap(), 0).is_err());
    }
}
