//! The Docker driver: the only module of the agent that talks to the Docker engine (through
//! bollard). Everything crossing its border is converted to the reconciler's own types
//! ([`Observed`], [`ObservedContainer`], ...) or to [`ContainerEvent`] and [`DockerError`];
//! no bollard type appears in a public signature.

mod create;
pub mod engine;
mod error;
mod network;
mod observe;
mod volume;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerSummary, EventMessage};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use steward_proto::ContainerSpec;
use tokio::io::AsyncReadExt;

use crate::reconcile::types::{Observed, ObservedContainer, LABEL_MANAGED, LABEL_NODE};
pub use error::DockerError;
use error::{describe, status};
pub use network::BRIDGE_NAME_OPTION;
use observe::{managed, unmanaged, OwnLabels};

/// Where the engine listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Seconds an ordinary engine call may take before it is abandoned (bollard's default).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Seconds a `docker load` may take: the whole tarball is uploaded before the engine answers.
const LOAD_TIMEOUT_SECS: u64 = 3600;

/// How many containers are inspected at once while observing.
const INSPECT_CONCURRENCY: usize = 8;

/// A lifecycle event of a Steward-managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Container id.
    pub id: String,
    /// Container name, without the leading '/'.
    pub name: String,
    /// Docker's action word: `start`, `die`, `stop`, `kill`, `oom`, `destroy`, `rename`,
    /// `update`, ... (`health_status: healthy` and `exec_start: ...` carry a suffix).
    pub action: String,
}

/// A connection to the local Docker engine.
#[derive(Debug, Clone)]
pub struct Docker {
    api: bollard::Docker,
    socket: PathBuf,
}

impl Docker {
    /// Connects to the local engine over its unix socket (default [`DEFAULT_SOCKET`]) and
    /// negotiates the API version: Debian's engine speaks 1.41, bollard would default to 1.53.
    pub async fn connect(socket: Option<&Path>) -> Result<Self, DockerError> {
        let socket = socket.unwrap_or(Path::new(DEFAULT_SOCKET)).to_path_buf();
        let fail = |reason: String| DockerError::Connect {
            socket: socket.clone(),
            reason,
        };
        let path = socket
            .to_str()
            .ok_or_else(|| fail("the socket path is not UTF-8".into()))?;
        if !socket.exists() {
            return Err(fail("the socket does not exist".into()));
        }
        let api = bollard::Docker::connect_with_unix(
            path,
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| fail(describe(&e)))?;
        let api = api
            .negotiate_version()
            .await
            .map_err(|e| fail(describe(&e)))?;
        let v = api.client_version();
        tracing::debug!(socket = %socket.display(), api = %format!("{}.{}", v.major_version, v.minor_version), "connected to Docker");
        Ok(Docker { api, socket })
    }

    /// The socket this connection uses.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's version string, e.g. "20.10.24+dfsg1".
    pub async fn version(&self) -> Result<String, DockerError> {
        let v = self
            .api
            .version()
            .await
            .map_err(|e| DockerError::engine("query the engine version", &e))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Everything the reconciler needs in one pass: every container (running or not) and every
    /// local image reference (`repo:tag` and `repo@digest`).
    ///
    /// Managed containers (label `io.steward.managed=true`) are inspected for their restart
    /// count, exit code and [`ObservedConfig`]. Other containers are described from the listing
    /// alone: their exit code is read from the status text, their restart count is 0 and their
    /// config holds only the image. A container removed between listing and inspecting is left
    /// out.
    pub async fn observe(&self) -> Result<Observed, DockerError> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let summaries = self
            .api
            .list_containers(Some(opts))
            .await
            .map_err(|e| DockerError::engine("list containers", &e))?;
        let containers: Vec<Option<ObservedContainer>> = futures_util::stream::iter(summaries)
            .map(|s| self.observe_one(s))
            .buffered(INSPECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;

        let images = self
            .api
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(|e| DockerError::engine("list images", &e))?;
        let images: BTreeSet<String> = images
            .into_iter()
            .flat_map(|i| i.repo_tags.into_iter().chain(i.repo_digests))
            .filter(|r| !r.starts_with("<none>"))
            .collect();
        Ok(Observed {
            containers: containers.into_iter().flatten().collect(),
            images,
        })
    }

    async fn observe_one(
        &self,
        mut s: ContainerSummary,
    ) -> Result<Option<ObservedContainer>, DockerError> {
        let id = s.id.take().unwrap_or_default();
        let labels = OwnLabels::of(s.labels.take().unwrap_or_default());
        if !labels.managed {
            return Ok(Some(unmanaged(id, labels, s)));
        }
        let inspect = match self.api.inspect_container(&id, None).await {
            Ok(i) => i,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(DockerError::engine(format!("inspect container {id}"), &e)),
        };
        Ok(Some(managed(id, labels, s, inspect)))
    }

    /// Pulls an image, following the progress stream to its end. A reference without a tag or
    /// digest means `:latest` (the engine itself would pull every tag).
    pub async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let reference = with_default_tag(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&reference)
            .build();
        let mut progress = self.api.create_image(Some(opts), None, None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| DockerError::ImageUnavailable {
                image: image.to_string(),
                reason: describe(&e),
            })?;
        }
        tracing::info!(image, "pulled image");
        Ok(())
    }

    /// Creates a container named `spec.name` for the spec and starts it; returns its id.
    ///
    /// It carries the spec's labels plus Steward's ownership labels (`io.steward.managed=true`,
    /// `io.steward.name`, `io.steward.spec-hash` = `hash`, `io.steward.node` = `node_id`, and
    /// `io.steward.session` for a container of a session). When
    /// it will not start, it is removed again before the error is returned: no leftovers.
    pub async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
    ) -> Result<String, DockerError> {
        self.create_and_start_with(spec, hash, node_id, None).await
    }

    async fn create_and_start_with(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
        networking: Option<bollard::models::NetworkingConfig>,
    ) -> Result<String, DockerError> {
        let mut body = create::container_body(spec, hash, node_id)?;
        body.networking_config = networking;
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created =
            self.api
                .create_container(Some(opts), body)
                .await
                .map_err(|e| match status(&e) {
                    Some(404) if describe(&e).to_ascii_lowercase().contains("image") => {
                        DockerError::ImageMissing {
                            image: spec.image.clone(),
                            container: spec.name.clone(),
                            reason: describe(&e),
                        }
                    }
                    Some(409) => DockerError::NameConflict {
                        name: spec.name.clone(),
                        reason: describe(&e),
                    },
                    _ => DockerError::engine(format!("create container {}", spec.name), &e),
                })?;
        for w in &created.warnings {
            tracing::warn!(container = %spec.name, warning = %w, "Docker warning on create");
        }
        let id = created.id;
        if let Err(e) = self.api.start_container(&id, None).await {
            let reason = describe(&e);
            let cleanup = self.remove(&id).await.err().map(|e| e.to_string());
            return Err(DockerError::StartFailed {
                container: spec.name.clone(),
                reason,
                cleanup,
            });
        }
        tracing::info!(container = %spec.name, id = %short(&id), image = %spec.image, "created and started container");
        Ok(id)
    }

    /// Starts an existing container (by id or name). Starting a running one succeeds.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.api.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(DockerError::NotFound {
                container: id.to_string(),
                reason: describe(&e),
            }),
            Err(e) => Err(DockerError::engine(format!("start container {id}"), &e)),
        }
    }

    /// Whether the engine has an image by this reference (`repo:tag`, `sha256:...`).
    pub async fn image_exists(&self, reference: &str) -> Result<bool, DockerError> {
        match self.api.inspect_image(reference).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(DockerError::engine(
                format!("inspect image {reference}"),
                &e,
            )),
        }
    }

    /// Restarts the container `name` if it exists and belongs to `node_id` (Steward labels);
    /// true when it was restarted. A missing container is `Ok(false)`; one not owned by this
    /// node is refused.
    pub async fn restart_managed(&self, name: &str, node_id: &str) -> Result<bool, DockerError> {
        let inspect = match self.api.inspect_container(name, None).await {
            Ok(i) => i,
            Err(e) if status(&e) == Some(404) => return Ok(false),
            Err(e) => return Err(DockerError::engine(format!("inspect container {name}"), &e)),
        };
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(LABEL_NODE).map(String::as_str) != Some(node_id) {
            return Err(DockerError::NameConflict {
                name: name.to_string(),
                reason: "it is not managed by this node's agent, so it is not restarted".into(),
            });
        }
        self.api
            .restart_container(name, None)
            .await
            .map_err(|e| DockerError::engine(format!("restart container {name}"), &e))?;
        Ok(true)
    }

    /// Restarts a container (by id): stop (10 s grace) then start.
    pub async fn restart(&self, id: &str) -> Result<(), DockerError> {
        self.api
            .restart_container(id, None)
            .await
            .map_err(|e| DockerError::engine(format!("restart container {id}"), &e))
    }

    /// Stops a container (by id); Docker's restart policy leaves a container stopped this way
    /// alone. Stopping a stopped one succeeds.
    pub async fn stop(&self, id: &str) -> Result<(), DockerError> {
        match self.api.stop_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(304) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("stop container {id}"), &e)),
        }
    }

    /// Force-removes a container (by id or name), killing it if it runs. Named volumes are kept;
    /// its anonymous volumes go with it. A container that does not exist counts as removed.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.api.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            // Removal already in progress (e.g. a second remove racing the first): done too.
            Err(e) if status(&e) == Some(409) && describe(&e).contains("already in progress") => {
                Ok(())
            }
            Err(e) => Err(DockerError::engine(format!("remove container {id}"), &e)),
        }
    }

    /// Lifecycle events of Steward-managed containers only (label `io.steward.managed=true`),
    /// from now on. The stream ends or yields an error when the engine goes away; the caller
    /// reconnects (and re-observes, since events may have been missed).
    ///
    /// The stream is `Unpin`, so `while let Some(ev) = events.next().await` works directly.
    pub fn events(
        &self,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + Unpin + 'static {
        let mut filters: HashMap<&str, Vec<String>> = HashMap::new();
        filters.insert("type", vec!["container".to_string()]);
        filters.insert("label", vec![format!("{LABEL_MANAGED}=true")]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        self.api
            .events(Some(opts))
            .filter_map(|item| {
                std::future::ready(match item {
                    Ok(msg) => to_event(msg).map(Ok),
                    Err(e) => Some(Err(DockerError::engine("follow container events", &e))),
                })
            })
            .boxed()
    }

    /// Loads a `docker save` tarball from a file into the engine (streamed, never held in
    /// memory); returns the references it loaded (`repo:tag`, or `sha256:...` for an untagged
    /// image).
    pub async fn load_image(&self, tarball: &Path) -> Result<Vec<String>, DockerError> {
        let fail = |reason: String| DockerError::Load {
            path: tarball.to_path_buf(),
            reason,
        };
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|e| fail(format!("cannot open it: {e}")))?;
        let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 * 1024];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok::<_, std::io::Error>(Some((buf.into(), file)))
        });
        let api = self
            .api
            .clone()
            .with_timeout(Duration::from_secs(LOAD_TIMEOUT_SECS));
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut out = api.import_image(opts, bollard::body_try_stream(chunks), None);
        let mut loaded = Vec::new();
        while let Some(item) = out.next().await {
            let info = item.map_err(|e| fail(describe(&e)))?;
            for line in info.stream.as_deref().unwrap_or_default().lines() {
                if let Some(r) = line
                    .strip_prefix("Loaded image: ")
                    .or_else(|| line.strip_prefix("Loaded image ID: "))
                {
                    loaded.push(r.trim().to_string());
                }
            }
        }
        if loaded.is_empty() {
            return Err(fail(
                "the engine reported no image loaded; is it a `docker save` tarball?".into(),
            ));
        }
        tracing::info!(path = %tarball.display(), images = ?loaded, "loaded images");
        Ok(loaded)
    }
}

/// Our event for an engine event about a container; `None` for anything else.
fn to_event(msg: EventMessage) -> Option<ContainerEvent> {
    let action = msg.action?;
    let actor = msg.actor?;
    let id = actor.id?;
    let name = actor
        .attributes
        .and_then(|mut a| a.remove("name"))
        .unwrap_or_default();
    Some(ContainerEvent { id, name, action })
}

/// The container's own name from a listing's `Names` (which may also hold link aliases such
/// as `/other/alias`), without the leading '/'.
fn primary_name(names: &[String]) -> String {
    let trimmed = || names.iter().map(|n| n.trim_start_matches('/'));
    trimmed()
        .find(|n| !n.contains('/'))
        .or_else(|| trimmed().next())
        .unwrap_or_default()
        .to_string()
}

/// The exit code in a listing's status text such as "Exited (137) 5 seconds ago".
fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.parse().ok()
}

/// `busybox` → `busybox:latest`; references with a tag or digest are kept.
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tag() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("busybox:1"), "busybox:1");
        assert_eq!(
            with_default_tag("registry:5000/team/app"),
            "registry:5000/team/app:latest"
        );
        assert_eq!(
            with_default_tag("registry:5000/team/app:2"),
            "registry:5000/team/app:2"
        );
        assert_eq!(with_default_tag("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn status_exit_codes() {
        assert_eq!(
            exit_code_from_status("Exited (137) 5 seconds ago"),
            Some(137)
        );
        assert_eq!(
            exit_code_from_status("Exited (0) About a minute ago"),
            Some(0)
        );
        assert_eq!(exit_code_from_status("Up 3 minutes"), None);
        assert_eq!(exit_code_from_status("Created"), None);
    }

    #[test]
    fn primary_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(primary_name(&names(&["/web"])), "web");
        assert_eq!(primary_name(&names(&["/app/db", "/db"])), "db");
        assert_eq!(primary_name(&[]), "");
    }

    #[test]
    fn events_convert() {
        use bollard::models::EventActor;
        let msg = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("name".to_string(), "web".to_string()),
                    ("exitCode".to_string(), "137".to_string()),
                ])),
            }),
            ..Default::default()
        };
        assert_eq!(
            to_event(msg),
            Some(ContainerEvent {
                id: "abc".into(),
                name: "web".into(),
                action: "die".into()
            })
        );
        assert_eq!(to_event(EventMessage::default()), None);
    }
}
