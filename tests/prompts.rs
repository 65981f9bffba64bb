//! Prompts through a tokenizer.json with JanusFlow's chat template.

use rfgen_core::tokenizer::PromptTokenizer;
use rfgen_tests::tiny_tokenizer_json;

const WORDS: [(&str, u32); 6] = [("User", 10), (":", 11), ("Assistant", 12), ("red", 13), ("apple", 14), ("a", 15)];

#[test]
fn template_bos_and_generation_tag() {
    for add_bos in [true, false] {
        let json = tiny_tokenizer_json(1, 4, &WORDS, add_bos);
        let tok = PromptTokenizer::from_bytes(json.as_bytes(), None, None).unwrap();
        // "User: red apple\n\nAssistant:<BOG>" with BOS first, whether or not the tokenizer adds it.
        assert_eq!(tok.encode_prompt("red apple").unwrap(), vec![1, 10, 11, 13, 14, 12, 11, 4]);
    }
}

#[test]
fn bad_prompts_are_errors() {
    let json = tiny_tokenizer_json(1, 4, &WORDS, true);
    let tok = PromptTokenizer::from_bytes(json.as_bytes(), None, None).unwrap();
    assert!(tok.encode_prompt("   ").unwrap_err().to_string().contains("empty"));
    let huge = "a ".repeat(5000);
    assert!(tok.encode_prompt(&huge).unwrap_err().to_string().contains("tokens long"));
    assert!(PromptTokenizer::from_bytes(b"{not json", None, None).is_err());
}
