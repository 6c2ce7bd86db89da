//! Protobuf request bodies: any bytes after the `k8s\0` envelope prefix, and any bytes as a Deployment's message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = skiff_api::protobuf::decode(data);
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    let _ = skiff_api::protobuf::decode(&body);
});
