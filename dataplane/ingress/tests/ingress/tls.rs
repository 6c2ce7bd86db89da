//! TLS: certificates chosen by SNI, HTTP/2 over ALPN, redirects, rotation without dropping connections.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;

use crate::harness::*;

/// A self-signed certificate for `names`: (PEM certificate, PEM key).
fn cert(names: &[&str]) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn secret_yaml(name: &str, (crt, key): &(String, String)) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(crt),
        indent(key)
    )
}

fn tls_section(entries: &[(&str, &str)]) -> String {
    let mut out = String::from("  tls:\n");
    for (host, secret) in entries {
        out.push_str(&format!("  - {{hosts: [\"{host}\"], secretName: {secret}}}\n"));
    }
    out
}

/// curl over HTTPS with SNI `host` trusting only `ca`; returns (ok, output).
async fn curl_https(ingress: &Ingress, host: &str, ca: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let port = ingress.https.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let ca = ca.display().to_string();
    let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_exact_then_wildcard_then_the_default_and_h2_is_negotiated() {
    let up = Upstream::start("a").await;
    let (exact, wild) = (cert(&["a.test"]), cert(&["*.w.test"]));
    let yaml = [
        secret_yaml("exact", &exact),
        secret_yaml("wild", &wild),
        service_yaml("svc", &[&up]),
        ingress_yaml(
            "web",
            "",
            &[("a.test", "/", "svc"), ("*.w.test", "/", "svc"), ("other.test", "/", "svc")],
            &tls_section(&[("a.test", "exact"), ("*.w.test", "wild")]),
        ),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let dir = ingress.dir.path();
    std::fs::write(dir.join("exact.pem"), &exact.0).expect("write");
    std::fs::write(dir.join("wild.pem"), &wild.0).expect("write");
    let (ok, out) =
        curl_https(&ingress, "a.test", &dir.join("exact.pem"), &["--http2", "-w", "\n%{http_version}"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("\"server\":\"a\"") && out.trim_end().ends_with("\n2"), "{out}");
    let (ok, out) = curl_https(&ingress, "x.w.test", &dir.join("wild.pem"), &[]).await;
    assert!(ok, "wildcard certificate: {out}");
    let (ok, out) = curl_https(&ingress, "other.test", &dir.join("exact.pem"), &[]).await;
    assert!(!ok, "a name without a Secret gets the default certificate, not another host's: {out}");
    let (ok, out) = curl_https(&ingress, "other.test", &dir.join("exact.pem"), &["-k", "--http1.1"]).await;
    assert!(ok && out.contains("\"x-forwarded-proto\":\"https\""), "{out}");
    let (ok, out) = curl_https(&ingress, "a.test", &dir.join("exact.pem"), &["--tls-max", "1.1"]).await;
    assert!(!ok, "TLS 1.1 is refused: {out}");
    let m = ingress.metrics_text().await;
    assert!(m.contains("skiff_ingress_tls_handshakes_total{version=\"TLSv1.3\"}"), "{m}");
    // h2 over TLS (ALPN) is the fast path's own, as HTTP/1.1 is
    assert!(!m.contains("skiff_ingress_fast_path_handovers_total{"), "a request was handed to Pingora:\n{m}");
    assert!(
        m.contains("skiff_ingress_certificate_expiry_timestamp_seconds{secret=\"default/exact\",host=\"a.test\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_is_redirected_with_308_unless_ssl_redirect_is_off() {
    let up = Upstream::start("a").await;
    let yaml = [
        service_yaml("svc", &[&up]),
        ingress_yaml("tls", "", &[("secure.test", "/", "svc")], &tls_section(&[("secure.test", "none")])),
        ingress_yaml(
            "plain",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"false\"",
            &[("lax.test", "/", "svc")],
            &tls_section(&[("lax.test", "none")]),
        ),
        ingress_yaml(
            "forced",
            "nginx.ingress.kubernetes.io/force-ssl-redirect: \"true\"",
            &[("forced.test", "/", "svc")],
            "",
        ),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let r = ingress.get("secure.test", "/p?q=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(format!("https://secure.test:{}/p?q=1", ingress.https.port())));
    assert_eq!(ingress.get("lax.test", "/").await.status, 200);
    assert_eq!(ingress.get("forced.test", "/").await.status, 308);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_while_open_connections_keep_working() {
    let up = Upstream::start("a").await;
    let (old, new) = (cert(&["rot.test"]), cert(&["rot.test"]));
    let config = |c: &(String, String)| {
        [
            secret_yaml("rot", c),
            service_yaml("svc", &[&up]),
            ingress_yaml("web", "", &[("rot.test", "/", "svc")], &tls_section(&[("rot.test", "rot")])),
        ]
        .concat()
    };
    let ingress = Ingress::start(&config(&old)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(old.0.as_bytes()).expect("pem")).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(ingress.https).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("rot.test").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake with the old certificate");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http1");
    tokio::spawn(conn);
    let get = || Request::get("/").header("host", "rot.test").body(Full::new(Bytes::new())).expect("req");
    assert_eq!(read_reply(sender.send_request(get()).await.expect("first")).await.status, 200);

    ingress.apply(&config(&new));
    let dir = ingress.dir.path();
    std::fs::write(dir.join("old.pem"), &old.0).expect("write");
    std::fs::write(dir.join("new.pem"), &new.0).expect("write");
    let (ok, out) = curl_https(&ingress, "rot.test", &dir.join("new.pem"), &[]).await;
    assert!(ok, "new handshakes get the new certificate: {out}");
    let (ok, _) = curl_https(&ingress, "rot.test", &dir.join("old.pem"), &[]).await;
    assert!(!ok, "and not the old one");
    for _ in 0..3 {
        sender.ready().await.expect("the open connection is still open");
        let r = read_reply(sender.send_request(get()).await.expect("the open connection still works")).await;
        assert_eq!(r.status, 200);
    }
}
