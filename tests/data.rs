//! rfgen_core::data on synthetic sources: emoji captions, skin tones with their base, the held-out
//! rule, RGBA on white, the on-disk format's round trip and bad inputs; digits.

use rfgen_core::data::{self, emoji, Dataset, Split};
use rfgen_tests::tempdir;

#[path = "data_fixtures.rs"]
mod fixtures;
use fixtures::*;

fn item<'a>(ds: &'a Dataset, id: &str) -> (usize, &'a data::Item) {
    ds.items.iter().enumerate().find(|(_, i)| i.id == id).unwrap_or_else(|| panic!("no item {id}"))
}

#[test]
fn emoji_captions_variants_and_pixels() {
    let dir = tempdir("data-emoji");
    let nm = write_sources(&dir);
    let built = build_from(&nm, 64).unwrap();
    let ds = &built.dataset;
    assert_eq!(built.skipped, vec!["1fae8.png".to_string()]);
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["1f34e", "1f44b", "1f44b-1f3fb", "1f44b-1f3fd", "2764-fe0f", "1f1f3-1f1f4", "1f1e7-1f1fb", "1f44b-1f3ff"]
    );
    let (_, apple) = item(ds, "1f34e");
    assert_eq!(
        apple.captions,
        [
            "red apple",
            "apple",
            "an emoji of a red apple",
            "food & drink emoji: red apple",
            "apple, fruit, red, healthy"
        ],
        "{apple:?}"
    );
    let (_, heart) = item(ds, "2764-fe0f");
    assert!(heart.captions.contains(&"red heart".to_string()), "FE0F-insensitive OpenMoji match: {heart:?}");
    assert!(heart.captions.contains(&"heavy black heart".to_string()));
    assert!(heart.captions.contains(&"heart, love".to_string()));
    let (_, norway) = item(ds, "1f1f3-1f1f4");
    assert!(norway.captions.contains(&"flag of Norway".to_string()), "{norway:?}");
    assert!(norway.captions.contains(&"an emoji of the flag of Norway".to_string()));
    assert!(norway.captions.contains(&"flag no".to_string()));

    // Skin tones: their own images, their base's captions with the tone, their base's split.
    let (_, hand) = item(ds, "1f44b");
    for (id, tone) in
        [("1f44b-1f3fb", "light skin tone"), ("1f44b-1f3fd", "medium skin tone"), ("1f44b-1f3ff", "dark skin tone")]
    {
        let (_, v) = item(ds, id);
        assert_eq!(v.base, "1f44b");
        assert_eq!(v.split, hand.split);
        assert!(v.captions.contains(&format!("waving hand, {tone}")), "{v:?}");
        assert!(v.captions.contains(&format!("an emoji of a waving hand, {tone}")), "{v:?}");
        assert!(v.captions.contains(&format!("hand, wave, {tone}")), "{v:?}");
    }
    // Identical images: one held-out group.
    assert_eq!(item(ds, "1f1e7-1f1fb").1.split, norway.split);
    assert_eq!(item(ds, "1f1e7-1f1fb").1.base, "1f1e7-1f1fb");
    let flags = if emoji::is_heldout("1f1e7-1f1fb") { Split::Heldout } else { Split::Train };
    assert_eq!(norway.split, flags, "the group's key is its smallest base");
    for it in &ds.items {
        if it.base == it.id && !it.id.starts_with("1f1") {
            let want = if emoji::is_heldout(&emoji::heldout_key(&it.base)) { Split::Heldout } else { Split::Train };
            assert_eq!(it.split, want, "{}", it.id);
        }
    }

    // Pixels: opaque colours kept, the transparent corner white, half alpha mixed with white.
    let (i, _) = item(ds, "1f34e");
    let img = ds.image(i);
    assert_eq!(&img[..3], &[255, 255, 255]);
    assert_eq!(&img[3..6], &[200, 0, 0]);
    let (i, _) = item(ds, "2764-fe0f");
    assert_eq!(&ds.image(i)[3..6], &[255, 127, 127]);
    let px = ds.pixels_nchw(&[i]);
    assert_eq!(px.len(), 3 * 64 * 64);
    assert_eq!(px[1], 1.0);
    assert!((px[64 * 64 + 1] - (127.0 / 127.5 - 1.0)).abs() < 1e-6);

    // 32×32: an area average; a flat colour stays flat, the transparent corner blends.
    let small = build_from(&nm, 32).unwrap().dataset;
    assert_eq!(small.size, 32);
    assert_eq!(small.images.len(), small.len() * 32 * 32 * 3);
    let (i, _) = item(&small, "1f34e");
    assert_eq!(&small.image(i)[3..6], &[200, 0, 0]);
    assert_eq!(&small.image(i)[..3], &[214, 64, 64]);
}

#[test]
fn heldout_rule_covers_at_least_a_tenth() {
    // Over many plausible code points the rule holds out about HELDOUT_PERCENT%.
    let keys: Vec<String> = (0x1F300u32..0x1F300 + 3000).map(|c| format!("{c:x}")).collect();
    let held = keys.iter().filter(|k| emoji::is_heldout(k)).count();
    let frac = held as f64 / keys.len() as f64;
    assert!((0.095..0.13).contains(&frac), "{frac}");
    assert_eq!(emoji::heldout_key("2764-FE0F"), "2764");
    assert_eq!(emoji::heldout_key("1f44b"), "1f44b");
}

#[test]
fn dataset_dir_round_trip_and_replace() {
    let dir = tempdir("data-roundtrip");
    let nm = write_sources(&dir);
    let ds = build_from(&nm, 16).unwrap().dataset;
    let out = dir.join("out/emoji16");
    data::save_dir(&out, &ds, &[(data::PREVIEW_FILE, vec![1, 2, 3])]).unwrap();
    assert!(out.join(data::IMAGES_FILE).is_file() && out.join(data::CAPTIONS_FILE).is_file());
    assert_eq!(std::fs::read(out.join(data::PREVIEW_FILE)).unwrap(), vec![1, 2, 3]);
    let back = data::load_dir(&out).unwrap();
    assert_eq!(back, ds);
    // The format as documented.
    let cap: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("captions.json")).unwrap()).unwrap();
    assert_eq!(cap["name"], "emoji");
    assert_eq!(cap["size"], 16);
    assert_eq!(cap["items"][0]["id"], "1f34e");
    assert!(cap["items"][0]["split"] == "train" || cap["items"][0]["split"] == "heldout");
    let st = safetensors::SafeTensors::deserialize(&std::fs::read(out.join("images.safetensors")).unwrap())
        .unwrap()
        .tensor("images")
        .map(|t| (t.dtype(), t.shape().to_vec()))
        .unwrap();
    assert_eq!(st, (safetensors::Dtype::U8, vec![ds.len(), 16, 16, 3]));
    // Replacing leaves exactly the new set and no temporary siblings.
    let digits = data::digits::from_csv("d.csv", digits_csv(3).as_bytes(), 8).unwrap();
    data::save_dir(&out, &digits, &[]).unwrap();
    assert_eq!(data::load_dir(&out).unwrap(), digits);
    assert!(!out.join(data::PREVIEW_FILE).exists());
    let siblings: Vec<_> = std::fs::read_dir(dir.join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(siblings.len(), 1, "{siblings:?}");
    // A damaged part is named.
    std::fs::write(out.join("images.safetensors"), b"xx").unwrap();
    let err = data::load_dir(&out).unwrap_err().to_string();
    assert!(err.contains("images.safetensors"), "{err}");
    assert!(data::load_dir(&dir.join("nope")).unwrap_err().to_string().contains("does not exist"));
}

#[test]
fn emoji_bad_inputs_are_named() {
    let dir = tempdir("data-bad");
    let nm = write_sources(&dir);
    let img = nm.join("emoji-datasource-google/img/google/64");
    std::fs::write(img.join("1f44b-1f3fd.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let err = build_from(&nm, 64).err().unwrap().to_string();
    assert!(err.contains("1f44b-1f3fd.png") && err.contains("PNG"), "{err}");

    let src = emoji::Sources {
        emoji_json: b"{\"not\": \"a list\"}",
        emoji_json_name: "/x/emoji.json",
        openmoji_json: None,
        openmoji_json_name: "openmoji.json",
        image_dir_name: "/x/img",
    };
    let err = emoji::build(&src, 64, |_| Ok(None)).err().unwrap().to_string();
    assert!(err.contains("/x/emoji.json"), "{err}");
    let src = emoji::Sources { emoji_json: b"[]", ..src };
    assert!(emoji::build(&src, 64, |_| Ok(None)).is_err());
    let one = br#"[{"name": "X", "unified": "1F600", "image": "1f600.png"}]"#;
    let src = emoji::Sources { emoji_json: one, openmoji_json: Some(b"[{]"), ..src };
    assert!(emoji::build(&src, 64, |_| Ok(None)).err().unwrap().to_string().contains("openmoji.json"));
    let src = emoji::Sources { openmoji_json: None, ..src };
    // No PNG at all: an error, not an empty set.
    assert!(emoji::build(&src, 64, |_| Ok(None)).err().unwrap().to_string().contains("no emoji image"));
    assert!(emoji::build(&src, 0, |_| Ok(None)).is_err());
}

#[test]
fn digits_from_csv() {
    let ds = data::digits::from_csv("digits.csv", digits_csv(25).as_bytes(), 32).unwrap();
    assert_eq!((ds.name.as_str(), ds.size, ds.len()), ("digits", 32, 25));
    assert_eq!(ds.indices(Split::Heldout), vec![0, 10, 20]);
    assert_eq!(
        ds.items[17].captions,
        ["a handwritten digit seven", "the digit 7", "handwritten 7", "the number seven"]
    );
    // Gray: the three channels are equal.
    assert!(ds.images.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}
