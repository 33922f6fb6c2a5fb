//! Session templates (`templates/{name}`) and sessions (`sessions/{id}`). A session's change
//! that moves its node's spec (create, extend, end) is stored in one transaction with the
//! node's spec record, compared on the spec epoch: quotas and allocations computed under the
//! spec gate hold across replicas.

use steward_proto::{Session, Template};

use super::{enc, Result, SpecWrite, Store, SPEC_EPOCH};
use crate::kv::{Revision, Txn};

/// Key prefix of the templates.
pub const TEMPLATES: &str = "templates/";
/// Key prefix of the sessions.
pub const SESSIONS: &str = "sessions/";

impl Store {
    pub async fn template(&self, name: &str) -> Result<Option<(Template, Revision)>> {
        self.get(&format!("{TEMPLATES}{name}")).await
    }

    pub async fn templates(&self) -> Result<Vec<Template>> {
        self.values(TEMPLATES).await
    }

    /// Stores a template if its record is still at `revision` (`0`: new);
    /// [`super::StoreError::Stale`] otherwise.
    pub async fn put_template(&self, t: &Template, revision: Revision) -> Result<Revision> {
        let key = format!("{TEMPLATES}{}", t.name);
        self.commit(Txn::new().when(&key, revision).put(&key, enc(t)))
            .await
    }

    /// Deletes a template if its record is still at `revision`.
    pub async fn delete_template(&self, name: &str, revision: Revision) -> Result<Revision> {
        let key = format!("{TEMPLATES}{name}");
        self.commit(Txn::new().when(&key, revision).delete(&key).freeing())
            .await
    }

    pub async fn session(&self, id: &str) -> Result<Option<(Session, Revision)>> {
        self.get(&format!("{SESSIONS}{id}")).await
    }

    /// Every stored session (live and recently ended), with its revision.
    pub async fn sessions(&self) -> Result<Vec<(Session, Revision)>> {
        let mut out = Vec::new();
        self.scan_raw(SESSIONS, |_, kv| {
            out.push((super::dec(kv)?, kv.mod_revision));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Stores a session and its node's spec record in one transaction, if no spec change
    /// committed since `epoch` and neither record changed since it was read
    /// ([`super::StoreError::Stale`] otherwise).
    pub async fn write_session(
        &self,
        epoch: Revision,
        spec: &SpecWrite,
        session: &Session,
        revision: Revision,
    ) -> Result<Revision> {
        let (skey, key) = (
            format!("specs/{}", spec.node_id),
            format!("{SESSIONS}{}", session.id),
        );
        let txn = Txn::new()
            .when(SPEC_EPOCH, epoch)
            .put(SPEC_EPOCH, Vec::new())
            .when(&skey, spec.revision)
            .put(&skey, enc(&spec.record))
            .when(&key, revision)
            .put(&key, enc(session));
        let txn = if session.state.is_live() {
            txn
        } else {
            txn.freeing()
        };
        self.commit(txn).await
    }

    /// Stores a session whose spec piece did not change (its state), if its record is still
    /// at `revision`.
    pub async fn put_session(&self, session: &Session, revision: Revision) -> Result<Revision> {
        let key = format!("{SESSIONS}{}", session.id);
        self.commit(Txn::new().when(&key, revision).put(&key, enc(session)))
            .await
    }

    /// Deletes ended sessions (trimming), each only if unchanged since read.
    pub async fn delete_sessions(&self, ids: &[(String, Revision)]) -> Result<()> {
        for chunk in ids.chunks(super::TXN_OPS / 2) {
            let mut txn = Txn::new().freeing();
            for (id, rev) in chunk {
                let key = format!("{SESSIONS}{id}");
                txn = txn.when(&key, *rev).delete(key);
            }
            // A session changed meanwhile is left for the next trim.
            match self.commit(txn).await {
                Ok(_) | Err(super::StoreError::Stale) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
