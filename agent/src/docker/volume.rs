//! Docker volumes of sessions: observed as the reconciler's [`ObservedVolume`], created with
//! Steward's labels (`io.steward.managed=true`, `io.steward.node`, `io.steward.session`, and
//! `io.steward.keep=true` for a kept one), removed only when no container uses them.

use std::collections::{BTreeSet, HashMap};

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder};

use super::error::{describe, status};
use super::{Docker, DockerError};
use crate::reconcile::types::{LABEL_KEEP, LABEL_MANAGED, LABEL_NODE, LABEL_SESSION};
use crate::reconcile::volumes::{ObservedVolume, SessionVolume};

impl Docker {
    /// Every volume of the engine, with what Steward's labels say and whether a container
    /// (running or not) uses it.
    pub async fn observe_volumes(&self) -> Result<Vec<ObservedVolume>, DockerError> {
        let all = self.list_volumes(None).await?;
        let unused: BTreeSet<String> = (self.list_volumes(Some("true")).await?)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok(all
            .into_iter()
            .map(|(name, labels)| {
                let in_use = !unused.contains(&name);
                observed_volume(name, &labels, in_use)
            })
            .collect())
    }

    /// The engine's volumes (only those no container uses with `dangling` = "true"), by name
    /// with their labels.
    async fn list_volumes(
        &self,
        dangling: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
        let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
        if let Some(d) = dangling {
            filters.insert("dangling", vec![d]);
        }
        let opts = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = self
            .api
            .list_volumes(Some(opts))
            .await
            .map_err(|e| DockerError::engine("list volumes", &e))?;
        let volumes = listed.volumes.unwrap_or_default().into_iter();
        Ok(volumes.map(|v| (v.name, v.labels)).collect())
    }

    /// Creates the session volume `v` for `node_id`. A volume of that name created meanwhile by
    /// someone else (the engine then answers with the existing volume) is an error: it is not
    /// this session's, and it is left alone.
    pub async fn create_volume(&self, v: &SessionVolume, node_id: &str) -> Result<(), DockerError> {
        let labels = volume_labels(v, node_id);
        let req = VolumeCreateRequest {
            name: Some(v.name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let op = || format!("create volume {} for session {}", v.name, v.session);
        let made =
            (self.api.create_volume(req).await).map_err(|e| DockerError::engine(op(), &e))?;
        let ours = labels
            .iter()
            .all(|(k, val)| made.labels.get(k) == Some(val));
        if !ours {
            return Err(DockerError::Engine {
                op: op(),
                reason: format!(
                    "a volume named {} exists without this session's labels; it is not taken over",
                    v.name
                ),
            });
        }
        tracing::info!(volume = %v.name, session = %v.session, keep = v.keep, "created session volume");
        Ok(())
    }

    /// Removes the volume `name`: true when it is gone (or was already), false when a container
    /// still uses it (it is left for a later pass).
    pub async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        let opts = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self.api.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(409) => {
                tracing::debug!(volume = %name, reason = %describe(&e), "volume in use; left for a later pass");
                Ok(false)
            }
            Err(e) => Err(DockerError::engine(format!("remove volume {name}"), &e)),
        }
    }
}

/// The labels a session volume is created with.
fn volume_labels(v: &SessionVolume, node_id: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_NODE.to_string(), node_id.to_string()),
        (LABEL_SESSION.to_string(), v.session.clone()),
    ]);
    if v.keep {
        labels.insert(LABEL_KEEP.to_string(), "true".to_string());
    }
    labels
}

/// A listed volume as the reconciler sees it.
fn observed_volume(name: String, labels: &HashMap<String, String>, in_use: bool) -> ObservedVolume {
    let is_true = |k: &str| labels.get(k).map(String::as_str) == Some("true");
    ObservedVolume {
        managed: is_true(LABEL_MANAGED),
        node: labels.get(LABEL_NODE).cloned(),
        session: labels.get(LABEL_SESSION).cloned(),
        keep: is_true(LABEL_KEEP),
        in_use,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_observation() {
        for keep in [false, true] {
            let v = SessionVolume {
                name: "data".into(),
                session: "s1".into(),
                keep,
            };
            let labels = volume_labels(&v, "n1");
            assert_eq!(labels.len(), 3 + usize::from(keep));
            let seen = observed_volume("data".into(), &labels, true);
            assert_eq!(
                seen,
                ObservedVolume {
                    name: "data".into(),
                    managed: true,
                    node: Some("n1".into()),
                    session: Some("s1".into()),
                    keep,
                    in_use: true,
                }
            );
        }
        let bare = observed_volume("x".into(), &HashMap::new(), false);
        assert!(!bare.managed && bare.node.is_none() && bare.session.is_none() && !bare.keep);
    }
}
