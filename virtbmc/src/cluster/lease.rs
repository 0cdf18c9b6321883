//! Leader election over a `coordination.k8s.io/v1` Lease, client-go style:
//! GET it, PUT it back with its resourceVersion (409 = someone else won the race), POST to
//! create it (409 AlreadyExists = likewise). A holder is presumed gone when the Lease's
//! resourceVersion has not moved for a whole lease duration *as this agent observed it*, so
//! clock skew between nodes does not matter.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use super::Shared;

pub async fn run(sh: Arc<Shared>) {
    let api: Api<Lease> = Api::namespaced(sh.client.clone(), &sh.opts.lease_namespace);
    let duration = sh.opts.lease_duration;
    let retry = (duration / 3).max(Duration::from_millis(200));
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    loop {
        match step(&sh, &api, &mut observed).await {
            Ok(true) => {
                last_renew = Some(Instant::now());
                sh.set_leader(true);
            }
            Ok(false) => sh.set_leader(false),
            Err(e) => {
                log::warn!(
                    "lease={}/{} error: {e}",
                    sh.opts.lease_namespace,
                    sh.opts.lease_name
                );
                // Keep leading only while the last renewal is still valid.
                if last_renew.is_none_or(|t| t.elapsed() >= duration) {
                    sh.set_leader(false);
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Gives the Lease up (on shutdown) so that another agent takes it at its next round rather
/// than after a whole lease duration. Only if this agent still holds it: one that is not
/// leading (or never runs for it, as an agent without the controller's role) sends nothing.
pub async fn release(sh: &Shared) {
    if !sh.is_leader() {
        return;
    }
    let api: Api<Lease> = Api::namespaced(sh.client.clone(), &sh.opts.lease_namespace);
    sh.set_leader(false);
    let Ok(Some(mut lease)) = api.get_opt(&sh.opts.lease_name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(sh.opts.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match api
        .replace(&sh.opts.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => log::info!("lease={} released", sh.opts.lease_name),
        Err(e) => log::warn!("lease={} release: {e}", sh.opts.lease_name),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round: Ok(true) if this agent holds the Lease afterwards.
async fn step(
    sh: &Shared,
    api: &Api<Lease>,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let me = &sh.opts.identity;
    let secs = sh.opts.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&sh.opts.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(sh.opts.lease_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    if observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
        *observed = Some((rv, Instant::now()));
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = observed
        .as_ref()
        .is_some_and(|(_, at)| at.elapsed() >= sh.opts.lease_duration);
    if holder != *me {
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        log::info!("lease={} taking over from {holder:?}", sh.opts.lease_name);
        spec.holder_identity = Some(me.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(secs);
    match api
        .replace(&sh.opts.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(l) => {
            *observed = Some((
                l.metadata.resource_version.unwrap_or_default(),
                Instant::now(),
            ));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
