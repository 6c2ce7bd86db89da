//! Multi-document YAML/JSON manifests: any text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = skiff_api::yaml::parse_documents(text);
    }
});
