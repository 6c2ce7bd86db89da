//! Authentication: client certificates signed by the cluster CA (CN is the user, O the groups), the node join
//! token, and service-account tokens (JWTs signed by the API server). A request with none of them gets 401.
//!
//! # Caveats
//! Authorization is "every authenticated user may do everything" for now; per-namespace access control (RBAC) is
//! not enforced yet.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::Api;
use super::error::{ApiError, ApiResult};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name (`skiff-admin`, `system:node:n1`, `system:serviceaccount:ns:name`).
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// The user the node join token authenticates as (a bootstrap token's form, `system:bootstrap:<id>`).
pub const BOOTSTRAP_USER: &str = "system:bootstrap:skiff";

/// The identity in a verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub User);

/// The longest a requested token may live (as upstream's 2^32 seconds).
pub const MAX_TOKEN_SECONDS: i64 = 1 << 32;

/// The audience and issuer of service-account tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

type HmacSha256 = Hmac<Sha256>;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// What a service-account token is for.
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    /// The namespace of the service account.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its uid.
    pub uid: &'a str,
    /// Validity in seconds.
    pub seconds: i64,
    /// The pod (name, uid) it is bound to, if any.
    pub pod: Option<(&'a str, &'a str)>,
    /// Audiences (the API server's own, [`ISSUER`], when empty).
    pub audiences: &'a [String],
}

/// Signs a service-account token; returns it and its expiry (Unix seconds).
pub fn sign_token(key: &[u8], spec: &TokenSpec<'_>) -> (String, i64) {
    let TokenSpec { namespace, name, uid, seconds, pod, audiences } = *spec;
    let audiences: Vec<&str> =
        if audiences.is_empty() { vec![ISSUER] } else { audiences.iter().map(String::as_str).collect() };
    let now = jiff::Timestamp::now().as_second();
    let exp = now + seconds;
    let mut k8s = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}});
    if let Some((pn, pu)) = pod {
        k8s["pod"] = json!({"name": pn, "uid": pu});
    }
    let claims = json!({
        "iss": ISSUER, "aud": audiences, "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now, "nbf": now, "exp": exp, "kubernetes.io": k8s,
    });
    let header = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
    let payload = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(signing_input.as_bytes());
    let sig = b64(&mac.finalize().into_bytes());
    (format!("{signing_input}.{sig}"), exp)
}

/// Verifies a token's signature, issuer, audience (the API server's own) and expiry; returns its claims.
pub fn verify_token(key: &[u8], token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    mac.verify_slice(&sig).ok()?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let for_us = match claims.get("aud")? {
        Value::String(a) => a == ISSUER,
        Value::Array(a) => a.iter().any(|x| x == ISSUER),
        _ => false,
    };
    (claims.get("iss")? == ISSUER && for_us && exp > jiff::Timestamp::now().as_second()).then_some(claims)
}

/// Whether two secrets are equal, in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Api {
    /// Authenticates a bearer token.
    pub async fn authenticate_token(&self, token: &str) -> Option<User> {
        if !self.auth.node_token.is_empty() && same_secret(token, &self.auth.node_token) {
            // the join token only bootstraps: it may ask for a node certificate and nothing else
            return Some(User {
                name: BOOTSTRAP_USER.into(),
                groups: vec![crate::certificates::BOOTSTRAPPERS_GROUP.into(), "system:authenticated".into()],
            });
        }
        // every static token is compared, each in constant time, so timing tells nothing about any of them
        let mut found = None;
        for (t, user) in &self.auth.static_tokens {
            if same_secret(token, t) {
                found = Some(user.clone());
            }
        }
        if found.is_some() {
            return found;
        }
        let now = std::time::Instant::now();
        if let Some(u) = self.tokens.get(token, now) {
            return Some(u);
        }
        let claims = verify_token(&self.auth.sa_key, token)?;
        let left = claims.get("exp")?.as_i64()? - jiff::Timestamp::now().as_second();
        let expires = now + std::time::Duration::from_secs(u64::try_from(left).ok()?);
        let ns = claims.pointer("/kubernetes.io/namespace")?.as_str()?;
        let name = claims.pointer("/kubernetes.io/serviceaccount/name")?.as_str()?;
        let uid = claims.pointer("/kubernetes.io/serviceaccount/uid")?.as_str()?;
        // the service account must still exist (and be the same one)
        let sa = self.try_get(&self.builtin("", "serviceaccounts"), Some(ns), name).await.ok()??;
        if skiff_api::meta::uid(&sa.object) != uid {
            return None;
        }
        if let (Some(pod), Some(pod_uid)) = (
            claims.pointer("/kubernetes.io/pod/name").and_then(Value::as_str),
            claims.pointer("/kubernetes.io/pod/uid").and_then(Value::as_str),
        ) {
            let p = self.try_get(&self.builtin("", "pods"), Some(ns), pod).await.ok()??;
            if skiff_api::meta::uid(&p.object) != pod_uid {
                return None;
            }
        }
        let user = User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        };
        self.tokens.put(token, user.clone(), now, expires);
        Some(user)
    }

    /// `serviceaccounts/{name}/token`: issues a TokenRequest for `caller` (whose kind of identity may limit it:
    /// nodes only get tokens bound to a scheduled pod that runs as that account, as NodeRestriction allows).
    pub async fn token_request(&self, ns: &str, name: &str, req: &Value, caller: Option<&User>) -> ApiResult<Value> {
        let sa = self.get(&self.builtin("", "serviceaccounts"), Some(ns), name).await?;
        let seconds = req.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
        if seconds < 600 {
            return Err(ApiError::bad_request(
                "spec.expirationSeconds: may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > MAX_TOKEN_SECONDS {
            return Err(ApiError::bad_request(format!(
                "spec.expirationSeconds: may not specify a duration longer than {MAX_TOKEN_SECONDS} seconds"
            )));
        }
        let is_node = caller.is_some_and(|u| u.groups.iter().any(|g| g == "system:nodes"));
        let bound = match (
            req.pointer("/spec/boundObjectRef/kind").and_then(Value::as_str),
            req.pointer("/spec/boundObjectRef/name").and_then(Value::as_str),
        ) {
            (Some("Pod"), Some(pod)) => {
                let p = self.get(&self.builtin("", "pods"), Some(ns), pod).await?;
                let uid = skiff_api::meta::uid(&p.object);
                if let Some(want) =
                    req.pointer("/spec/boundObjectRef/uid").and_then(Value::as_str).filter(|u| !u.is_empty())
                    && want != uid
                {
                    return Err(ApiError::conflict_message(
                        format!("the UID in the bound object reference ({want}) does not match pod {pod}'s ({uid})"),
                        None,
                    ));
                }
                if is_node {
                    let runs_as = super::serviceaccount::account_of(&p.object);
                    // bound to the asking node itself (a node of no name owns no pod)
                    let me = caller.and_then(super::noderestriction::node_name);
                    let on_me =
                        p.object.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| Some(n) == me);
                    if runs_as != name || !on_me {
                        return Err(ApiError::forbidden(format!(
                            "serviceaccounts \"{name}\" is forbidden: a node may only request tokens for the service account of a pod bound to it and named in the request (pod {pod} runs as {runs_as:?})"
                        )));
                    }
                }
                Some((pod.to_string(), uid.to_string()))
            }
            (Some(kind), _) => {
                return Err(ApiError::bad_request(format!(
                    "spec.boundObjectRef.kind: Unsupported value: {kind:?}: supported values: \"Pod\""
                )));
            }
            (None, _) if is_node => {
                return Err(ApiError::forbidden(format!(
                    "serviceaccounts \"{name}\" is forbidden: a node may only request tokens bound to a pod"
                )));
            }
            (None, _) => None,
        };
        let audiences: Vec<String> = req
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let (token, exp) = sign_token(
            &self.auth.sa_key,
            &TokenSpec {
                namespace: ns,
                name,
                uid: skiff_api::meta::uid(&sa.object),
                seconds,
                pod: bound.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                audiences: &audiences,
            },
        );
        let exp_ts =
            jiff::Timestamp::from_second(exp).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default();
        let mut out = req.clone();
        out["kind"] = json!("TokenRequest");
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
        out["spec"]["audiences"] = json!(if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences });
        out["spec"]["expirationSeconds"] = json!(seconds);
        out["status"] = json!({"token": token, "expirationTimestamp": exp_ts});
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_before_expiry() {
        let spec = TokenSpec { namespace: "default", name: "sa", uid: "u1", seconds: 3600, pod: None, audiences: &[] };
        let (t, _) = sign_token(b"k1", &spec);
        let claims = verify_token(b"k1", &t).expect("valid");
        assert_eq!(claims["sub"], "system:serviceaccount:default:sa");
        assert!(verify_token(b"k2", &t).is_none());
        let (expired, _) = sign_token(b"k1", &TokenSpec { seconds: -10, ..spec });
        assert!(verify_token(b"k1", &expired).is_none());
        // a token for another audience (a vault, a CI system) is not a credential for the API server
        let vault = ["vault".to_string()];
        let (other, _) = sign_token(b"k1", &TokenSpec { audiences: &vault, ..spec });
        assert!(verify_token(b"k1", &other).is_none());
        let both = ["vault".to_string(), ISSUER.to_string()];
        assert!(verify_token(b"k1", &sign_token(b"k1", &TokenSpec { audiences: &both, ..spec }).0).is_some());
        assert!(verify_token(b"k1", "a.b").is_none());
    }
}
