//! The emoji set: Noto emoji images from npm `emoji-datasource-google` (`img/google/64/*.png`,
//! 64×64 RGBA, described by `emoji.json`) with captions from their names and from npm `openmoji`'s
//! `data/openmoji.json` (annotations and tags, text only).
//!
//! - Every entry of `emoji.json` with a Google image, and every one of its `skin_variations` with
//!   one, becomes an image; entries whose PNG is missing are skipped.
//! - An image's `id` is its lowercased `unified` code points (its file name without `.png`); its
//!   `base` is the id of the entry it belongs to: a skin-tone variant's base is the entry that
//!   lists it, and a top-level entry whose code points contain a skin-tone modifier (U+1F3FB–1F3FF)
//!   belongs to the entry with those modifiers removed when there is one.
//! - OpenMoji records are matched by code points, case-insensitive and ignoring U+FE0F.
//! - Captions (deduplicated, order kept): the OpenMoji annotation (`flag: Chile` → `flag of
//!   Chile`, other `a: b` → `a, b`), the Unicode name lowercased, each short name with `_`/`-` as
//!   spaces, "an emoji of a …", "<category> emoji: …" (emoji.json's category, lowercased), and
//!   the tags (OpenMoji's `tags` then `openmoji_tags`, at most [`MAX_TAGS`], joined with commas).
//!   A skin-tone variant's captions are its base's followed by the tone(s), e.g. "waving hand,
//!   medium skin tone", plus the variant's own OpenMoji annotation.
//! - Pixels: RGBA composited on white, center-cropped to a square, area-averaged down (or bilinear
//!   up) to the requested size; 64 leaves Noto's 64×64 images untouched.
//! - Held out: bases are grouped with every base that has an identical image (e.g. flags that
//!   share a design); a group is held out when `fnv1a64(key) % 100 < HELDOUT_PERCENT`, `key` being
//!   the group's smallest base id with `-fe0f` removed. Variants always follow their base.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::pixels::{composite_on_white, decode_png_rgba, fit_square};
use super::{check_size, fnv1a64, Dataset, Item, Split};
use crate::error::{Error, Result};

/// A group is held out when `fnv1a64(key) % 100 < HELDOUT_PERCENT` (measured on
/// emoji-datasource-google 16.0.0: 204 of 1911 bases, 10.7%; 424 of 3786 images, 11.2%).
pub const HELDOUT_PERCENT: u64 = 11;

/// The tag caption keeps this many tags (OpenMoji's `tags` first, then `openmoji_tags`).
pub const MAX_TAGS: usize = 10;

/// The skin-tone modifiers and their CLDR names.
const TONES: [(&str, &str); 5] = [
    ("1F3FB", "light skin tone"),
    ("1F3FC", "medium-light skin tone"),
    ("1F3FD", "medium skin tone"),
    ("1F3FE", "medium-dark skin tone"),
    ("1F3FF", "dark skin tone"),
];

#[derive(Deserialize)]
struct DsEmoji {
    #[serde(default)]
    name: Option<String>,
    unified: String,
    image: String,
    #[serde(default)]
    short_names: Vec<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default = "yes")]
    has_img_google: bool,
    #[serde(default)]
    skin_variations: Option<BTreeMap<String, DsVariation>>,
}

#[derive(Deserialize)]
struct DsVariation {
    unified: String,
    image: String,
    #[serde(default = "yes")]
    has_img_google: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default, Clone)]
struct OpenMoji {
    hexcode: String,
    #[serde(default)]
    annotation: Option<String>,
    #[serde(default)]
    tags: Option<String>,
    #[serde(default)]
    openmoji_tags: Option<String>,
}

/// The inputs of [`build`], as bytes; the names only label error messages.
pub struct Sources<'a> {
    /// emoji-datasource-google's `emoji.json`.
    pub emoji_json: &'a [u8],
    pub emoji_json_name: &'a str,
    /// openmoji's `data/openmoji.json`; without it captions come from emoji.json only.
    pub openmoji_json: Option<&'a [u8]>,
    pub openmoji_json_name: &'a str,
    /// How to name the image directory in messages (`…/img/google/64`).
    pub image_dir_name: &'a str,
}

/// One image to be: its ids, its PNG's file name and its captions.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub id: String,
    pub base: String,
    pub image: String,
    pub captions: Vec<String>,
}

/// Code points for matching: uppercase, without U+FE0F.
pub fn normalize_code(unified: &str) -> String {
    unified
        .split('-')
        .map(|p| p.trim().to_uppercase())
        .filter(|p| !p.is_empty() && p != "FE0F")
        .collect::<Vec<_>>()
        .join("-")
}

fn is_tone(p: &str) -> bool {
    TONES.iter().any(|(c, _)| c.eq_ignore_ascii_case(p))
}

/// The code points without skin-tone modifiers (normalized).
fn strip_tones(unified: &str) -> String {
    normalize_code(unified).split('-').filter(|p| !is_tone(p)).collect::<Vec<_>>().join("-")
}

/// The held-out key of a base id: lowercase, `-fe0f` removed.
pub fn heldout_key(base: &str) -> String {
    normalize_code(base).to_lowercase()
}

/// Whether a group whose key (see [`heldout_key`]) is `key` is held out.
pub fn is_heldout(key: &str) -> bool {
    fnv1a64(key.as_bytes()) % 100 < HELDOUT_PERCENT
}

/// "1F3FB-1F3FC" → "light skin tone, medium-light skin tone" (a repeated tone once).
fn tone_phrase(key: &str) -> Option<String> {
    let mut names: Vec<&str> = vec![];
    for p in key.split('-') {
        let (_, n) = TONES.iter().find(|(c, _)| c.eq_ignore_ascii_case(p.trim()))?;
        if !names.contains(n) {
            names.push(n);
        }
    }
    (!names.is_empty()).then(|| names.join(", "))
}

/// Collapses whitespace; `flag: X` → `flag of X`, `keycap: X` → `keycap X`, `a: b` → `a, b`.
fn clean_annotation(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(rest) = s.strip_prefix("flag: ") {
        return format!("flag of {rest}");
    }
    if let Some(rest) = s.strip_prefix("keycap: ") {
        return format!("keycap {rest}");
    }
    s.replace(": ", ", ")
}

fn clean_short_name(s: &str) -> String {
    s.replace(['_', '-'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "an emoji of a red apple", "an emoji of an eye", "an emoji of the flag of Chile", "an emoji of
/// french fries" (no article before a plural last word).
fn emoji_of(primary: &str) -> String {
    let lower = primary.to_lowercase();
    if lower.starts_with("flag of ") {
        return format!("an emoji of the {primary}");
    }
    let first = lower.chars().next().unwrap_or(' ');
    let last_word = lower.split_whitespace().last().unwrap_or("");
    let plural =
        last_word.len() > 2 && last_word.ends_with('s') && !["ss", "us", "is"].iter().any(|e| last_word.ends_with(e));
    let has_article = ["a ", "an ", "the "].iter().any(|a| lower.starts_with(a));
    if plural || has_article || !first.is_alphabetic() {
        format!("an emoji of {primary}")
    } else if "aeiou".contains(first) {
        format!("an emoji of an {primary}")
    } else {
        format!("an emoji of a {primary}")
    }
}

fn split_tags(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|t| !t.is_empty())
        .collect()
}

fn push_unique(out: &mut Vec<String>, c: String) {
    let c = c.trim().to_string();
    if !c.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&c)) {
        out.push(c);
    }
}

/// Captions of an image: `tone` is set for skin-tone variants, `variant_om` is the variant's own
/// OpenMoji record.
fn captions(e: &DsEmoji, om: Option<&OpenMoji>, tone: Option<&str>, variant_om: Option<&OpenMoji>) -> Vec<String> {
    let name = e.name.as_deref().map(|n| n.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase());
    let name = name.filter(|n| !n.is_empty()).map(|n| clean_annotation(&n));
    let annotation = om.and_then(|o| o.annotation.as_deref()).map(clean_annotation).filter(|a| !a.is_empty());
    let shorts: Vec<String> = e.short_names.iter().map(|s| clean_short_name(s)).filter(|s| !s.is_empty()).collect();
    let primary = annotation.clone().or(name.clone()).or_else(|| shorts.first().cloned());
    let mut tags = vec![];
    for t in split_tags(om.and_then(|o| o.tags.as_deref()))
        .into_iter()
        .chain(split_tags(om.and_then(|o| o.openmoji_tags.as_deref())))
    {
        push_unique(&mut tags, t);
    }
    let with_tone = |s: String| match tone {
        Some(t) => format!("{s}, {t}"),
        None => s,
    };
    let mut out = vec![];
    if let Some(v) = variant_om.and_then(|o| o.annotation.as_deref()).map(clean_annotation) {
        push_unique(&mut out, v);
    }
    for c in annotation.iter().chain(name.iter()).chain(shorts.iter()) {
        push_unique(&mut out, with_tone(c.clone()));
    }
    if let Some(p) = &primary {
        push_unique(&mut out, with_tone(emoji_of(p)));
    }
    if let (Some(p), Some(c)) = (&primary, e.category.as_deref().map(str::trim).filter(|c| !c.is_empty())) {
        push_unique(&mut out, with_tone(format!("{} emoji: {p}", c.to_lowercase())));
    }
    if !tags.is_empty() {
        tags.truncate(MAX_TAGS);
        push_unique(&mut out, with_tone(tags.join(", ")));
    }
    if out.is_empty() {
        // Nothing to describe it with: its code points are still a caption of sorts.
        push_unique(&mut out, with_tone(format!("emoji {}", e.unified.to_lowercase())));
    }
    out
}

fn parse_openmoji(bytes: &[u8], name: &str) -> Result<HashMap<String, OpenMoji>> {
    let list: Vec<OpenMoji> = serde_json::from_slice(bytes).map_err(|e| Error::config(name, e))?;
    let mut map = HashMap::with_capacity(list.len());
    for o in list {
        map.entry(normalize_code(&o.hexcode)).or_insert(o);
    }
    Ok(map)
}

/// Every image the sources describe, in emoji.json's order (each variant right after its base),
/// with ids, bases and captions. Entries without a Google image are left out; duplicate ids are
/// kept once.
pub fn plan(src: &Sources) -> Result<Vec<Planned>> {
    let entries: Vec<DsEmoji> =
        serde_json::from_slice(src.emoji_json).map_err(|e| Error::config(src.emoji_json_name, e))?;
    if entries.is_empty() {
        return Err(Error::config(src.emoji_json_name, "no emoji listed"));
    }
    let om = match src.openmoji_json {
        Some(b) => parse_openmoji(b, src.openmoji_json_name)?,
        None => HashMap::new(),
    };
    // Top-level entries by normalized code points, for the base of a toned top-level entry.
    let by_code: HashMap<String, usize> =
        entries.iter().enumerate().map(|(i, e)| (normalize_code(&e.unified), i)).collect();
    let tones_of = |unified: &str| {
        let code = normalize_code(unified);
        tone_phrase(&code.split('-').filter(|p| is_tone(p)).collect::<Vec<_>>().join("-"))
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for e in &entries {
        let id = e.unified.to_lowercase();
        let code = normalize_code(&e.unified);
        let e_om = om.get(&code);
        // A top-level entry with skin tones belongs to the entry without them, when listed.
        let stripped = strip_tones(&e.unified);
        let owner = by_code.get(&stripped).filter(|_| !stripped.is_empty() && stripped != code).map(|&i| &entries[i]);
        let base = owner.map(|o| o.unified.to_lowercase()).unwrap_or_else(|| id.clone());
        if e.has_img_google && seen.insert(id.clone()) {
            let caps = match owner {
                Some(o) => captions(o, om.get(&normalize_code(&o.unified)), tones_of(&e.unified).as_deref(), e_om),
                None => captions(e, e_om, None, None),
            };
            out.push(Planned { id: id.clone(), base: base.clone(), image: e.image.clone(), captions: caps });
        }
        for (key, v) in e.skin_variations.iter().flatten() {
            let vid = v.unified.to_lowercase();
            if !v.has_img_google || !seen.insert(vid.clone()) {
                continue;
            }
            let tone = tone_phrase(key).or_else(|| tones_of(&v.unified));
            let v_om = om.get(&normalize_code(&v.unified));
            out.push(Planned {
                id: vid,
                base: base.clone(),
                image: v.image.clone(),
                captions: captions(e, e_om, tone.as_deref(), v_om),
            });
        }
    }
    Ok(out)
}

/// What [`build`] made, and the images it skipped for want of a PNG.
pub struct Built {
    pub dataset: Dataset,
    pub skipped: Vec<String>,
}

/// Builds the dataset: `load(file name)` returns the PNG's bytes, or `None` when there is no such
/// file (the image is then skipped). A PNG that does not decode is an error naming it.
pub fn build(src: &Sources, size: usize, mut load: impl FnMut(&str) -> Result<Option<Vec<u8>>>) -> Result<Built> {
    check_size(size)?;
    let planned = plan(src)?;
    let mut images: Vec<u8> = Vec::with_capacity(planned.len() * size * size * 3);
    let mut kept: Vec<Planned> = vec![];
    let mut skipped = vec![];
    for p in planned {
        let Some(bytes) = load(&p.image)? else {
            skipped.push(p.image.clone());
            continue;
        };
        let label = format!("{}/{}", src.image_dir_name.trim_end_matches('/'), p.image);
        let (w, h, rgba) = decode_png_rgba(&label, &bytes)?;
        let rgb = fit_square(&composite_on_white(w, h, &rgba), size);
        images.extend_from_slice(&rgb.data);
        kept.push(p);
    }
    if kept.is_empty() {
        return Err(Error::input(format!("no emoji image found under {}", src.image_dir_name)));
    }
    let splits = assign_splits(&kept, &images, size * size * 3);
    let items = kept
        .into_iter()
        .zip(splits)
        .map(|(p, split)| Item { id: p.id, base: p.base, split, captions: p.captions })
        .collect();
    let dataset = Dataset { name: "emoji".into(), size, images, items };
    dataset.validate()?;
    Ok(Built { dataset, skipped })
}

/// The split of every image: bases linked by identical images form a group, keyed by its
/// smallest base (see [`heldout_key`], [`is_heldout`]).
fn assign_splits(items: &[Planned], images: &[u8], per: usize) -> Vec<Split> {
    let mut base_ix: HashMap<&str, usize> = HashMap::new();
    for p in items {
        let n = base_ix.len();
        base_ix.entry(p.base.as_str()).or_insert(n);
    }
    let mut parent: Vec<usize> = (0..base_ix.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for (k, p) in items.iter().enumerate() {
        let img = &images[k * per..(k + 1) * per];
        let bucket = by_hash.entry(fnv1a64(img)).or_default();
        if let Some(&other) = bucket.iter().find(|&&o| &images[o * per..(o + 1) * per] == img) {
            let (a, b) =
                (find(&mut parent, base_ix[p.base.as_str()]), find(&mut parent, base_ix[items[other].base.as_str()]));
            parent[a] = b;
        } else {
            bucket.push(k);
        }
    }
    // Each group's key: its smallest base key.
    let mut key: HashMap<usize, String> = HashMap::new();
    for (b, &i) in &base_ix {
        let root = find(&mut parent, i);
        let k = heldout_key(b);
        let e = key.entry(root).or_insert_with(|| k.clone());
        if k < *e {
            *e = k;
        }
    }
    items
        .iter()
        .map(|p| {
            let root = find(&mut parent, base_ix[p.base.as_str()]);
            if is_heldout(&key[&root]) {
                Split::Heldout
            } else {
                Split::Train
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_and_articles() {
        assert_eq!(clean_annotation("flag: Chile"), "flag of Chile");
        assert_eq!(clean_annotation("keycap: 0"), "keycap 0");
        assert_eq!(clean_annotation("person: blond hair"), "person, blond hair");
        assert_eq!(emoji_of("red apple"), "an emoji of a red apple");
        assert_eq!(emoji_of("eye"), "an emoji of an eye");
        assert_eq!(emoji_of("flag of Chile"), "an emoji of the flag of Chile");
        assert_eq!(emoji_of("french fries"), "an emoji of french fries");
        assert_eq!(emoji_of("kiss"), "an emoji of a kiss");
        assert_eq!(emoji_of("100"), "an emoji of 100");
        assert_eq!(tone_phrase("1F3FD").as_deref(), Some("medium skin tone"));
        assert_eq!(tone_phrase("1F3FB-1F3FF").as_deref(), Some("light skin tone, dark skin tone"));
        assert_eq!(tone_phrase("1F3FB-1F3FB").as_deref(), Some("light skin tone"));
        assert_eq!(tone_phrase("1F600"), None);
        assert_eq!(normalize_code("2764-fe0f"), "2764");
        assert_eq!(strip_tones("1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FC"), "1F9D1-200D-1F91D-200D-1F9D1");
    }
}
