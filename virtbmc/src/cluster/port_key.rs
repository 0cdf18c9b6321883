//! The label mode's proof that a VM's port annotation was written by virtbmc. Without the
//! CRD a BMC's port lives in an annotation of the VM, which the VM's owner may edit: an owner
//! who copies another VM's port there would have the agents serve their VM on it (with the
//! one user every label-mode BMC shares). So the elected agent writes the port with a proof,
//! an HMAC over the VM's uid and the port under a key kept in a Secret of the agents'
//! namespace (which VM owners cannot read), and a port without a valid proof is taken for no
//! port at all: the leader gives the VM one of its own.

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use sha2::Sha256;

/// The Secret holding the key, in the agents' namespace.
pub const SECRET_NAME: &str = "virtbmc-port-key";
/// Its one key: 32 random bytes.
const DATA_KEY: &str = "key";
const KEY_LEN: usize = 32;

/// The key the proofs are made with.
#[derive(Clone, PartialEq, Eq)]
pub struct PortKey([u8; KEY_LEN]);

impl std::fmt::Debug for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortKey(..)")
    }
}

impl PortKey {
    pub fn new(bytes: [u8; KEY_LEN]) -> PortKey {
        PortKey(bytes)
    }

    /// The proof for `port` on the VM with this uid: 128 bits of HMAC-SHA256, in hex.
    pub fn proof(&self, uid: &str, port: u16) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(format!("{uid}/{port}").as_bytes());
        mac.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `proof` is this key's for `port` on the VM with this uid.
    pub fn verify(&self, uid: &str, port: u16, proof: &str) -> bool {
        crate::crypto::ct_eq(self.proof(uid, port).as_bytes(), proof.as_bytes())
    }
}

/// Reads the key from its Secret in `namespace`, creating the Secret with a random key when
/// there is none (the first agent to start; a concurrent creator's key wins, and is read).
pub async fn load_or_create(client: &kube::Client, namespace: &str) -> Result<PortKey, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        match api.get_opt(SECRET_NAME).await {
            Ok(Some(s)) => return from_secret(&s),
            Ok(None) => {}
            Err(e) => return Err(format!("reading Secret {namespace}/{SECRET_NAME}: {e}")),
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::getrandom(&mut key).map_err(|e| format!("no randomness: {e}"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET_NAME.into()),
                namespace: Some(namespace.into()),
                labels: Some([(super::MANAGED_BY.0.into(), super::MANAGED_BY.1.into())].into()),
                ..Default::default()
            },
            data: Some([(DATA_KEY.into(), ByteString(key.to_vec()))].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                log::info!(
                    "created Secret {namespace}/{SECRET_NAME}: the key of the label mode's port proofs"
                );
                return Ok(PortKey(key));
            }
            // Another agent created it meanwhile: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(format!("creating Secret {namespace}/{SECRET_NAME}: {e}")),
        }
    }
    Err(format!(
        "Secret {namespace}/{SECRET_NAME} neither readable nor creatable"
    ))
}

fn from_secret(s: &Secret) -> Result<PortKey, String> {
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .map(|b| b.0.as_slice())
        .unwrap_or_default();
    <[u8; KEY_LEN]>::try_from(bytes)
        .map(PortKey)
        .map_err(|_| format!("Secret {SECRET_NAME}: {DATA_KEY:?} must hold {KEY_LEN} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_binds_the_vm_and_the_port_under_the_key() {
        let k = PortKey([7; KEY_LEN]);
        let p = k.proof("uid-a", 10001);
        assert_eq!(p.len(), 32);
        assert!(k.verify("uid-a", 10001, &p));
        assert!(!k.verify("uid-a", 10002, &p), "another port");
        assert!(!k.verify("uid-b", 10001, &p), "copied onto another VM");
        assert!(
            !PortKey([8; KEY_LEN]).verify("uid-a", 10001, &p),
            "another key"
        );
        assert!(!k.verify("uid-a", 10001, ""));
    }

    #[test]
    fn the_secret_must_hold_a_whole_key() {
        let secret = |bytes: Vec<u8>| Secret {
            data: Some([(DATA_KEY.into(), ByteString(bytes))].into()),
            ..Default::default()
        };
        assert_eq!(from_secret(&secret(vec![1; 32])), Ok(PortKey([1; 32])));
        assert!(from_secret(&secret(vec![1; 31])).is_err());
        assert!(from_secret(&Secret::default()).is_err());
    }
}
