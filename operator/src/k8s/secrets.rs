//! The Secrets a spec names, read when needed: the operator neither lists nor watches Secrets.

use ir_api::Reason;
use ir_engine::machine::Failure;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// A key of a Secret, from `data` or `stringData`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(value.0.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// Reads `keys` of Secret `name`: a missing Secret may still come (transient), a missing key
/// will not (permanent). `field` names the spec field in messages.
pub async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    keys: &[&str],
    field: &str,
) -> Result<Vec<String>, Failure> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Failure::new(
                Reason::SecretNotFound,
                format!("{field}: Secret {namespace}/{name} does not exist"),
            ));
        }
        Err(e) => {
            return Err(Failure::new(
                Reason::KubernetesUnavailable,
                format!("reading Secret {namespace}/{name}: {e}"),
            ));
        }
    };
    keys.iter()
        .map(|key| {
            secret_value(&secret, key).ok_or_else(|| {
                Failure::new(
                    Reason::SecretKeyMissing,
                    format!("{field}: Secret {namespace}/{name} has no key {key:?}"),
                )
            })
        })
        .collect()
}
