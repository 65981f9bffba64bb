//! Synthetic sources for the data tests (tests/data.rs, tests/data_cli.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rfgen_core::data::emoji;

/// A `side × side` RGBA PNG filled with `rgba`, with a fully transparent top-left pixel.
pub fn rgba_png(side: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut px: Vec<u8> = (0..side * side).flat_map(|_| rgba).collect();
    px[..4].copy_from_slice(&[0, 0, 0, 0]);
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&px).unwrap();
    }
    out
}

fn variation(unified: &str) -> serde_json::Value {
    serde_json::json!({"unified": unified, "image": format!("{}.png", unified.to_lowercase()), "has_img_google": true})
}

/// node_modules with emoji-datasource-google (emoji.json + img/google/64) and openmoji
/// (data/openmoji.json): a red apple, a waving hand with two skin tones (and a toned top-level
/// entry), a heart whose OpenMoji code has no FE0F, twin flags with identical images, one entry
/// without a Google image and one whose PNG is missing.
pub fn write_sources(root: &Path) -> PathBuf {
    let nm = root.join("node_modules");
    let ds = nm.join("emoji-datasource-google");
    let img = ds.join("img/google/64");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(nm.join("openmoji/data")).unwrap();
    let emoji = serde_json::json!([
        {"name": "RED APPLE", "unified": "1F34E", "image": "1f34e.png", "short_names": ["apple"],
         "category": "Food & Drink", "subcategory": "food-fruit", "has_img_google": true},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "short_names": ["wave"],
         "has_img_google": true,
         "skin_variations": {"1F3FB": variation("1F44B-1F3FB"), "1F3FD": variation("1F44B-1F3FD")}},
        {"name": "HEAVY BLACK HEART", "unified": "2764-FE0F", "image": "2764-fe0f.png", "short_names": ["heart"],
         "has_img_google": true},
        {"name": "Norway Flag", "unified": "1F1F3-1F1F4", "image": "1f1f3-1f1f4.png", "short_names": ["flag-no"],
         "has_img_google": true},
        {"name": "Bouvet Island Flag", "unified": "1F1E7-1F1FB", "image": "1f1e7-1f1fb.png", "short_names": ["flag-bv"],
         "has_img_google": true},
        {"name": "NO GOOGLE IMAGE", "unified": "1F9CC", "image": "1f9cc.png", "short_names": ["troll"],
         "has_img_google": false},
        {"name": "MISSING FILE", "unified": "1FAE8", "image": "1fae8.png", "short_names": ["shaking_face"],
         "has_img_google": true},
        {"name": "WAVING HAND SIGN", "unified": "1F44B-1F3FF", "image": "1f44b-1f3ff.png", "short_names": ["wave"],
         "has_img_google": true}
    ]);
    std::fs::write(ds.join("emoji.json"), serde_json::to_vec(&emoji).unwrap()).unwrap();
    std::fs::write(ds.join("package.json"), r#"{"name": "emoji-datasource-google", "version": "0.0.0-test"}"#).unwrap();
    let om = serde_json::json!([
        {"hexcode": "1F34E", "annotation": "red apple", "tags": "apple, fruit, red", "openmoji_tags": "fruit, healthy"},
        {"hexcode": "1f44b", "annotation": "waving hand", "tags": "hand, wave", "openmoji_tags": ""},
        {"hexcode": "1F44B-1F3FD", "annotation": "waving hand: medium skin tone", "tags": "", "openmoji_tags": ""},
        {"hexcode": "2764", "annotation": "red heart", "tags": "heart, love", "openmoji_tags": ""},
        {"hexcode": "1F1F3-1F1F4", "annotation": "flag: Norway", "tags": "flag", "openmoji_tags": ""}
    ]);
    std::fs::write(nm.join("openmoji/data/openmoji.json"), serde_json::to_vec(&om).unwrap()).unwrap();
    std::fs::write(nm.join("openmoji/package.json"), r#"{"name": "openmoji", "version": "0.0.0-test"}"#).unwrap();
    let colors: [(&str, [u8; 4]); 7] = [
        ("1f34e", [200, 0, 0, 255]),
        ("1f44b", [250, 200, 0, 255]),
        ("1f44b-1f3fb", [240, 210, 180, 255]),
        ("1f44b-1f3fd", [180, 130, 90, 255]),
        ("1f44b-1f3ff", [90, 60, 40, 255]),
        ("2764-fe0f", [255, 0, 0, 128]),
        ("1f1f3-1f1f4", [0, 0, 200, 255]),
    ];
    for (id, c) in colors {
        std::fs::write(img.join(format!("{id}.png")), rgba_png(64, c)).unwrap();
    }
    // Bouvet Island's flag is Norway's.
    std::fs::copy(img.join("1f1f3-1f1f4.png"), img.join("1f1e7-1f1fb.png")).unwrap();
    nm
}

pub fn build_from(nm: &Path, size: usize) -> rfgen_core::Result<emoji::Built> {
    let ds = nm.join("emoji-datasource-google");
    let ej = std::fs::read(ds.join("emoji.json")).unwrap();
    let oj = std::fs::read(nm.join("openmoji/data/openmoji.json")).unwrap();
    let img = ds.join("img/google/64");
    let src = emoji::Sources {
        emoji_json: &ej,
        emoji_json_name: "emoji.json",
        openmoji_json: Some(&oj),
        openmoji_json_name: "openmoji.json",
        image_dir_name: &img.display().to_string(),
    };
    emoji::build(&src, size, |f| Ok(std::fs::read(img.join(f)).ok()))
}

pub fn digits_csv(n: usize) -> String {
    (0..n)
        .map(|i| {
            let mut v: Vec<String> = (0..64).map(|p| ((p + i) % 17).to_string()).collect();
            v.push((i % 10).to_string());
            v.join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
