//! Registry credentials from image pull secrets: `kubernetes.io/dockerconfigjson` (`{"auths": {…}}`) and the older
//! `kubernetes.io/dockercfg` (the map alone), each entry `{"username", "password"}` or `{"auth": base64(user:pass)}`,
//! keyed by registry (`host[:port]`, optionally with a scheme and path, `https://index.docker.io/v1/` for Docker Hub).

use base64::Engine as _;
use serde_json::Value;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The registry a config key names (`https://index.docker.io/v1/` → `docker.io`, `http://r:5000/x` → `r:5000`).
fn registry_of_key(key: &str) -> String {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

fn entry(v: &Value) -> Option<Credentials> {
    let user = v.get("username").and_then(Value::as_str).filter(|s| !s.is_empty());
    let pass = v.get("password").and_then(Value::as_str);
    if let (Some(u), Some(p)) = (user, pass) {
        return Some(Credentials { username: u.into(), password: p.into() });
    }
    let auth = v.get("auth").and_then(Value::as_str)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials { username: u.into(), password: p.into() })
}

/// The credentials a docker config (either form) holds for `registry` (`host[:port]`, `docker.io` for Docker Hub).
pub fn for_registry(config: &Value, registry: &str) -> Option<Credentials> {
    let auths = config.get("auths").unwrap_or(config).as_object()?;
    let want = registry.to_ascii_lowercase();
    auths.iter().find(|(k, _)| registry_of_key(k) == want).and_then(|(_, v)| entry(v))
}

/// The docker config in a pull Secret (its `data`, base64 as stored), if it holds one.
pub fn config_of_secret(secret: &Value) -> Option<Value> {
    let data = secret.get("data")?;
    let raw = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_forms_and_every_key_spelling_are_read() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cfg = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub-user:hub-pass")},
            "registry.example.com:5000": {"username": "u", "password": "p"},
            "http://10.0.0.5:5000/v2/": {"auth": b64("lan:secret:with:colons")}
        }});
        assert_eq!(for_registry(&cfg, "docker.io").map(|c| c.username), Some("hub-user".into()));
        assert_eq!(for_registry(&cfg, "registry.example.com:5000").map(|c| c.password), Some("p".into()));
        assert_eq!(for_registry(&cfg, "10.0.0.5:5000").map(|c| c.password), Some("secret:with:colons".into()));
        assert_eq!(for_registry(&cfg, "registry.example.com"), None, "the port is part of the name");
        let legacy = json!({"quay.io": {"auth": b64("q:w")}});
        assert_eq!(for_registry(&legacy, "quay.io"), Some(Credentials { username: "q".into(), password: "w".into() }));
        let secret =
            json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(&cfg.to_string())}});
        assert_eq!(config_of_secret(&secret), Some(cfg));
        assert_eq!(config_of_secret(&json!({"data": {"other": "eA=="}})), None);
    }
}
