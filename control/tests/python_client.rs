//! The official Python client (PyPI `kubernetes`, pinned by scripts/setup into a venv) against the API server
//! (issue 11): version, CRUD with 409/404/422, strategic merge patch, scale and status subresources, paged lists,
//! selectors, watch from a resourceVersion, a CRD and a custom object. The checks are in `python/client_check.py`.

mod common;

use std::path::PathBuf;

fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("SKIFF_PYTHON_VENV").map_or_else(|| PathBuf::from("/opt/skiff/python"), PathBuf::from);
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

#[test]
fn the_official_python_client_works_against_the_api_server() {
    let Some(python) = venv_python() else {
        assert!(std::env::var("CI").is_err(), "the Python client venv is missing: run scripts/setup");
        eprintln!("skipped: no Python client venv (scripts/setup installs it)");
        return;
    };
    let c = common::Cluster::start_with(None);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let out = std::process::Command::new(python).arg(&script).arg(&c.server.kubeconfig).output().expect("python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{stdout}");
}
