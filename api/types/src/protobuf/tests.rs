//! Decoder tests: bodies shaped as kubectl's Go encoder writes them (every non-pointer field on the wire, zero or
//! not), checked against the JSON the real API server makes of them.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn tag(n: u32, wire: u8) -> u8 {
    ((n << 3) as u8) | wire
}

fn ld(n: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![tag(n, 2), payload.len() as u8];
    v.extend_from_slice(payload);
    v
}

fn envelope(av: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut tm = ld(1, av.as_bytes());
    tm.extend(ld(2, kind.as_bytes()));
    let mut unknown = ld(1, &tm);
    unknown.extend(ld(2, raw));
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown);
    body
}

#[test]
fn a_hand_encoded_tls_secret_decodes() {
    let entry = |k: &str, v: &[u8]| {
        let mut e = ld(1, k.as_bytes());
        e.extend(ld(2, v));
        e
    };
    let mut meta = ld(1, b"tls");
    meta.extend(ld(3, b"default"));
    let mut raw = ld(1, &meta);
    raw.extend(ld(2, &entry("tls.crt", b"CERT")));
    raw.extend(ld(2, &entry("tls.key", b"KEY")));
    raw.extend(ld(3, b"kubernetes.io/tls"));
    let obj = decode(&envelope("v1", "Secret", &raw)).expect("decodes");
    assert_eq!(
        obj,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "default"},
               "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}, "type": "kubernetes.io/tls"})
    );
}

/// What `kubectl create deployment web --image=nginx --replicas=0 --port=80` sends, as Go encodes it.
fn deployment_body() -> Vec<u8> {
    encode_for_test(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "generateName": "", "namespace": "", "creationTimestamp": {},
                     "labels": {"app": "web"}, "generation": "0"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"name": "", "creationTimestamp": {}, "labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "nginx", "image": "nginx", "workingDir": "", "resources": {},
                                    "ports": [{"containerPort": 80, "hostPort": 0, "protocol": ""}],
                                    "stdin": false, "tty": false}],
                    "restartPolicy": "", "hostNetwork": false
                }
            },
            "strategy": {"type": ""},
            "minReadySeconds": 0, "paused": false
        },
        "status": {"observedGeneration": "0", "replicas": 0, "readyReplicas": 0}
    }))
}

#[test]
fn a_deployment_decodes_to_the_json_the_api_server_makes_of_it() {
    let obj = decode(&deployment_body()).expect("decodes");
    assert_eq!(
        obj,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {},
                                             "ports": [{"containerPort": 80}]}]}
                },
                "strategy": {}
            },
            "status": {}
        })
    );
}

#[test]
fn embedded_structs_join_their_parent_and_empty_sources_are_kept() {
    let body = encode_for_test(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox",
                            "readinessProbe": {"handler": {"httpGet": {"path": "/", "port": {"type": "1", "strVal": "http"}}},
                                               "periodSeconds": 1},
                            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"localObjectReference": {"name": "s"}, "key": "k"}}}]}],
            "volumes": [{"name": "scratch", "volumeSource": {"emptyDir": {}}}]
        }
    }));
    let obj = decode(&body).expect("decodes");
    assert_eq!(obj["spec"]["volumes"], json!([{"name": "scratch", "emptyDir": {}}]));
    let c = &obj["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"], json!({"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}));
    assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"], json!({"name": "s", "key": "k"}));
}

#[test]
fn service_ports_keep_int_or_string_and_drop_unset_node_ports() {
    let body = encode_for_test(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 0,
                            "targetPort": {"type": "0", "intVal": 8080}},
                           {"name": "x", "port": 81, "nodePort": 0, "targetPort": {"type": "0", "intVal": 0}}],
                 "type": "ClusterIP", "selector": {"app": "web"}}
    }));
    let obj = decode(&body).expect("decodes");
    assert_eq!(
        obj["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}, {"name": "x", "port": 81}])
    );
}

#[test]
fn times_durations_and_quantities_have_their_kubernetes_form() {
    let body = encode_for_test(&json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "q", "creationTimestamp": {"seconds": "1714557600"}},
        "spec": {"hard": {"pods": {"string": "10"}, "cpu": {"string": "500m"}}}
    }));
    let obj = decode(&body).expect("decodes");
    assert_eq!(obj["metadata"]["creationTimestamp"], "2024-05-01T10:00:00Z");
    assert_eq!(obj["spec"]["hard"], json!({"cpu": "500m", "pods": "10"}));
}

#[test]
fn crd_schemas_use_their_json_names_and_unions() {
    let body = encode_for_test(&json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                     "type": "object",
                     "xKubernetesPreserveUnknownFields": false,
                     "additionalProperties": {"allows": true},
                     "properties": {"spec": {"type": "object", "xKubernetesPreserveUnknownFields": true,
                                             "default": {"raw": "eyJhIjoxfQ=="}}}}}}]}
    }));
    let obj = decode(&body).expect("decodes");
    let schema = &obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert_eq!(schema["x-kubernetes-preserve-unknown-fields"], false, "a pointer keeps its false");
    assert_eq!(schema["additionalProperties"], true);
    assert_eq!(schema["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(schema["properties"]["spec"]["default"], json!({"a": 1}));
}

#[test]
fn a_kind_outside_the_schema_is_named_in_the_error() {
    let err = decode(&envelope("example.com/v1", "Widget", b"")).expect_err("no schema");
    assert_eq!(err, ProtobufError::UnknownKind { api_version: "example.com/v1".into(), kind: "Widget".into() });
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(matches!(decode(b"nope"), Err(ProtobufError::Malformed(_))));
    assert!(matches!(decode(b"k8s\0\xff\xff\xff"), Err(ProtobufError::Malformed(_))));
    assert!(matches!(decode(&envelope("v1", "", b"")), Err(ProtobufError::Malformed(_))));
    // a truncated Deployment
    let body = deployment_body();
    assert!(decode(&body[..body.len() - 7]).is_err());
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn nesting_past_the_recursion_limit_is_an_error_not_a_stack_overflow() {
    // JSONSchemaProps.not (field 28) nested 2,000 deep
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..2_000 {
        let mut outer = vec![0xe2, 0x01];
        varint(inner.len(), &mut outer);
        outer.extend(&inner);
        inner = outer;
    }
    let mut tm = ld(1, b"apiextensions.k8s.io/v1");
    tm.extend(ld(2, b"JSONSchemaProps"));
    let mut body = b"k8s\0".to_vec();
    body.extend(ld(1, &tm));
    body.push(tag(2, 2));
    varint(inner.len(), &mut body);
    body.extend(&inner);
    assert!(matches!(decode(&body), Err(ProtobufError::Malformed(_))));
    assert!(decode(&envelope("v1", "ConfigMap", b"")).is_ok());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&[b"k8s\0".as_slice(), &bytes].concat());
        let _ = decode(&envelope("apps/v1", "Deployment", &bytes));
    }

    #[test]
    fn flipping_a_byte_of_a_real_body_never_panics(at in 4usize..400, to in any::<u8>()) {
        let mut body = deployment_body();
        let at = at % body.len();
        body[at] = to;
        let _ = decode(&body);
    }
}
