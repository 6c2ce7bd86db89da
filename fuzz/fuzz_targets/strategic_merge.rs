//! Strategic merge patch: an original and a patch (two JSON documents separated by a NUL byte), merged as a Pod,
//! a Deployment and a custom resource.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|b| *b == 0) else { return };
    let (Ok(original), Ok(patch)) = (
        serde_json::from_slice::<serde_json::Value>(&data[..split]),
        serde_json::from_slice::<serde_json::Value>(&data[split + 1..]),
    ) else {
        return;
    };
    for kind in ["Pod", "Deployment", "Widget"] {
        let _ = skiff_api::smp::apply(&original, &patch, kind);
    }
});
