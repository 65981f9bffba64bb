//! The training images behind the indexed captions, as flow latents: a retrieval start for unseen
//! prompts. The sampler begins from the nearest neighbour's image noised to an img2img strength
//! (SDEdit) instead of from pure noise, so the layout and colours the neighbour caption stands for
//! are there from the first step, and the prompt and its neighbours guide the rest (the
//! image-conditioned half of retrieval-augmented generation: Re-Imagen, kNN-Diffusion, RDM).
//! Stored as int8 codes with one scale per image and channel ([`crate::quant`], each latent plane a
//! row): the coding error is far below the noise the start adds.

use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;

use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::quant::{quantize, QuantScheme, Quantized};

const CODES: &str = "image_latents_q8";
const SCALES: &str = "image_latents_scale";
const CAPTION_IMAGE: &str = "caption_image";

/// Flow latents `[images, c, h, w]` (8-bit) and, for each indexed caption, the image it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourImages {
    /// `[images, c, h, w]`.
    pub shape: [usize; 4],
    /// `[images · c, h · w]`, one scale per image and channel.
    planes: Quantized,
    /// The image of each indexed caption (its row in the index), as f32 (exact below 2^24).
    caption_image: Vec<f32>,
}

impl NeighbourImages {
    /// Codes `latents` `[images, c, h, w]`; `caption_image[row]` is the image of index row `row`.
    pub fn new(shape: [usize; 4], latents: &[f32], caption_image: Vec<usize>) -> Result<Self> {
        if shape.iter().any(|&d| d == 0) || latents.len() != shape.iter().product::<usize>() {
            return Err(Error::input(format!("{} latent values for shape {shape:?}", latents.len())));
        }
        if let Some(v) = latents.iter().find(|v| !v.is_finite()) {
            return Err(Error::input(format!("a neighbour image's latent is not finite ({v})")));
        }
        let planes = quantize("neighbour images", latents, shape[0] * shape[1], shape[2] * shape[3], QuantScheme::Int8)?;
        Self::checked(shape, planes, caption_image.into_iter().map(|i| i as f32).collect(), "neighbour images")
    }

    fn checked(shape: [usize; 4], planes: Quantized, caption_image: Vec<f32>, source: &str) -> Result<Self> {
        let bad = |m: String| Error::checkpoint(source, m);
        if planes.scales.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(bad(format!("{SCALES} holds a negative or non-finite scale")));
        }
        if let Some(i) = caption_image.iter().find(|&&i| !(i >= 0.0 && i.fract() == 0.0 && (i as usize) < shape[0])) {
            return Err(bad(format!("{CAPTION_IMAGE} names image {i}, and there are {} images", shape[0])));
        }
        Ok(Self { shape, planes, caption_image })
    }

    /// How many indexed captions it maps to images.
    pub fn rows(&self) -> usize {
        self.caption_image.len()
    }

    /// The image of index row `row`.
    pub fn image_of(&self, row: usize) -> Option<usize> {
        self.caption_image.get(row).map(|i| *i as usize)
    }

    /// The tensors that store them in the index file: float ones, and coded ones (name, dtype,
    /// shape, bytes).
    #[allow(clippy::type_complexity)]
    pub fn tensors(&self) -> ([(&'static str, Vec<usize>, &[f32]); 2], (&'static str, Dtype, Vec<usize>, Vec<u8>)) {
        let [n, c, _, _] = self.shape;
        (
            [(SCALES, vec![n, c], &self.planes.scales), (CAPTION_IMAGE, vec![self.caption_image.len()], &self.caption_image)],
            (CODES, Dtype::I8, self.shape.to_vec(), self.planes.codes.clone()),
        )
    }

    /// Reads them from an index file of `rows` captions, `None` when it has none of their tensors.
    pub fn from_weights(source: &str, w: &Weights, rows: usize) -> Result<Option<Self>> {
        let bad = |m: String| Error::checkpoint(source, m);
        let present = [CODES, SCALES, CAPTION_IMAGE].map(|n| w.contains(n));
        if present == [false; 3] {
            return Ok(None);
        }
        if present.contains(&false) {
            return Err(bad(format!("{CODES}, {SCALES} and {CAPTION_IMAGE} come together; the file lacks one")));
        }
        let float = |name: &str| -> Result<Vec<f32>> {
            w.read_f32(name).expect("present").map_err(|d| bad(format!("{name} has dtype {d}")))
        };
        if w.dtype(CODES).map(|d| d.name()) != Some("I8") {
            return Err(bad(format!("{CODES} is not I8")));
        }
        let shape: [usize; 4] = w.shape(CODES).unwrap_or_default().try_into().map_err(|_| bad(format!("{CODES} is not [images, c, h, w]")))?;
        if w.shape(CAPTION_IMAGE) != Some(&[rows][..]) {
            return Err(bad(format!("{CAPTION_IMAGE} has shape {:?}, and the index has {rows} captions", w.shape(CAPTION_IMAGE))));
        }
        let (planes, plane) = (shape[0] * shape[1], shape[2] * shape[3]);
        if shape.contains(&0) || w.shape(SCALES) != Some(&[shape[0], shape[1]][..]) {
            return Err(bad(format!("{SCALES} has shape {:?}, the codes {shape:?}", w.shape(SCALES))));
        }
        let codes = w.raw(CODES).expect("present").to_vec();
        let planes = Quantized::from_stored(codes, &[planes, plane], true, float(SCALES)?, &[planes, 1])
            .ok_or_else(|| bad(format!("{CODES} {shape:?} and {SCALES} do not fit together")))?;
        Self::checked(shape, planes, float(CAPTION_IMAGE)?, source).map(Some)
    }

    /// The latents of the images of index rows `rows`, `[rows, c, hw]` (resized bilinearly when
    /// `hw` is not their size).
    pub fn latents<B: Backend>(&self, rows: &[usize], hw: [usize; 2], device: &B::Device) -> Result<Tensor<B, 4>> {
        let [_, c, h, w] = self.shape;
        let plane = h * w;
        let mut values = Vec::with_capacity(rows.len() * c * plane);
        for &r in rows {
            let i = self.image_of(r).ok_or_else(|| Error::input(format!("index row {r} has no image")))?;
            for ch in i * c..(i + 1) * c {
                let scale = self.planes.scales[ch];
                values.extend(self.planes.codes[ch * plane..(ch + 1) * plane].iter().map(|&q| q as i8 as f32 * scale));
            }
        }
        let x = Tensor::from_data(TensorData::new(values, [rows.len(), c, h, w]), device);
        if [h, w] == hw {
            return Ok(x);
        }
        Ok(interpolate(x, hw, InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false)))
    }
}
