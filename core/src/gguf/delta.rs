//! A compact record of how training changed an LLM that is loaded from a GGUF.
//!
//! A model whose LLM comes from a GGUF stores, for every LLM tensor that stage 2 changed, only the
//! difference from the GGUF's (dequantized) values:
//! - `<key>.delta`: the whole difference, for tensors whose every row moved;
//! - `<key>.delta_rows` `[r, cols]` + `<key>.delta_row_ids` `[r]` (row numbers as exact f32
//!   integers): the rows that moved, for 2-D tensors that mostly stayed (the token embedding: only
//!   the rows of tokens seen in training get gradients under AdamW without weight decay).
//! Tensors that did not change are not stored at all.

use crate::checkpoint::Weights;
use crate::{Error, Result};

pub const DELTA: &str = ".delta";
pub const DELTA_ROWS: &str = ".delta_rows";
pub const DELTA_ROW_IDS: &str = ".delta_row_ids";

fn bad(msg: String) -> Error {
    Error::checkpoint("LLM delta", msg)
}

fn read(w: &Weights, name: &str) -> Result<Vec<f32>> {
    w.read_f32(name)
        .ok_or_else(|| bad(format!("missing tensor {name}")))?
        .map_err(|e| bad(format!("{name}: {e}")))
}

/// The delta of `trained` (keys `prefix + name`) against `base` (keys `name`), as f32 tensors
/// under `prefix + name + DELTA…`. Errors when a base tensor is missing from `trained` or has
/// another shape.
pub fn llm_delta(trained: &Weights, base: &Weights, prefix: &str) -> Result<Weights> {
    let mut out = Weights::new();
    for name in base.names() {
        let key = format!("{prefix}{name}");
        let shape = base.shape(name).expect("listed").to_vec();
        match trained.shape(&key) {
            None => return Err(bad(format!("the trained model has no {key}"))),
            Some(s) if s != shape.as_slice() => {
                return Err(bad(format!("{key}: trained shape {s:?}, GGUF shape {shape:?}")))
            }
            _ => {}
        }
        let (t, b) = (read(trained, &key)?, read(base, name)?);
        let d: Vec<f32> = t.iter().zip(&b).map(|(x, y)| x - y).collect();
        let cols = if shape.len() == 2 { shape[1] } else { d.len().max(1) };
        let moved: Vec<usize> = d.chunks(cols).enumerate().filter(|(_, r)| r.iter().any(|&v| v != 0.0)).map(|(i, _)| i).collect();
        if moved.is_empty() {
            continue;
        }
        let rows = d.len() / cols;
        if shape.len() == 2 && moved.len() * 2 < rows {
            let values = moved.iter().flat_map(|&r| d[r * cols..(r + 1) * cols].iter().copied()).collect();
            out.insert_f32(&format!("{key}{DELTA_ROWS}"), vec![moved.len(), cols], values);
            out.insert_f32(&format!("{key}{DELTA_ROW_IDS}"), vec![moved.len()], moved.iter().map(|&r| r as f32).collect());
        } else {
            out.insert_f32(&format!("{key}{DELTA}"), shape, d);
        }
    }
    Ok(out)
}

/// Whether `weights` holds any LLM delta tensor.
pub fn has_delta(weights: &Weights) -> bool {
    weights.names().any(|n| n.ends_with(DELTA) || n.ends_with(DELTA_ROWS) || n.ends_with(DELTA_ROW_IDS))
}

/// Adds every delta in `weights` to the base tensor it names (already in `weights`, e.g. just
/// loaded from the GGUF) and removes the delta tensors. Every misfit is an error naming the tensor.
pub fn apply_llm_delta(weights: &mut Weights) -> Result<()> {
    let deltas: Vec<String> = weights.names().filter(|n| n.ends_with(DELTA) || n.ends_with(DELTA_ROWS)).map(str::to_string).collect();
    for dname in &deltas {
        let (key, rows) = match dname.strip_suffix(DELTA_ROWS) {
            Some(k) => (k.to_string(), true),
            None => (dname.strip_suffix(DELTA).expect("suffix").to_string(), false),
        };
        let shape = weights
            .shape(&key)
            .ok_or_else(|| bad(format!("{dname}: there is no {key} for this delta to apply to")))?
            .to_vec();
        let mut base = read(weights, &key)?;
        let d = read(weights, dname)?;
        let dshape = weights.shape(dname).expect("listed").to_vec();
        if rows {
            let ids_name = format!("{key}{DELTA_ROW_IDS}");
            let ids = read(weights, &ids_name)?;
            let cols = *shape.last().unwrap_or(&0);
            if shape.len() != 2 || dshape != [ids.len(), cols] {
                return Err(bad(format!(
                    "{dname}: shape {dshape:?} does not fit {key} {shape:?} with {} row ids",
                    ids.len()
                )));
            }
            for (k, &id) in ids.iter().enumerate() {
                if !(id >= 0.0 && id.fract() == 0.0 && (id as usize) < shape[0]) {
                    return Err(bad(format!("{ids_name}: row id {id} is not a row of {key} {shape:?}")));
                }
                let r = id as usize;
                for (x, y) in base[r * cols..(r + 1) * cols].iter_mut().zip(&d[k * cols..(k + 1) * cols]) {
                    *x += y;
                }
            }
            weights.remove(&ids_name);
        } else {
            if dshape != shape {
                return Err(bad(format!("{dname}: shape {dshape:?}, {key} is {shape:?}")));
            }
            base.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
        }
        if base.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("{dname}: {key} is not finite after the delta")));
        }
        weights.insert_f32(&key, shape, base);
        weights.remove(dname);
    }
    if let Some(orphan) = weights.names().find(|n| n.ends_with(DELTA_ROW_IDS)) {
        return Err(bad(format!("{orphan} has no {DELTA_ROWS} beside it")));
    }
    Ok(())
}
