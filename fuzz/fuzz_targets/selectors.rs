//! Label and field selectors: any string, parsed, and when it parses, matched against an object.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let obj = serde_json::json!({"metadata": {"name": "n", "namespace": "default", "labels": {"app": "web", "tier": ""}},
                                 "status": {"phase": "Running"}, "spec": {"nodeName": "n1"}});
    if let Ok(s) = skiff_api::selector::Selector::parse(text) {
        let _ = s.matches_object(&obj);
    }
    if let Ok(f) = skiff_api::selector::FieldSelector::parse(text) {
        let _ = f.matches(&obj);
    }
});
