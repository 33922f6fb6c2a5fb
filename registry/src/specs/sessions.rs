//! Session pieces in node specs: a session's rendered spec is kept in its node's spec record
//! (`SpecRecord::sessions`) and merged into the effective spec like a fragment, conflicts
//! refused. Written under the spec gate, in one transaction with the session's record.

use chrono::Utc;
use steward_proto::{Actor, Event, EventKind, Health, NodeSpec, Session, SpecWritten};

use super::{Result, SpecError, Specs};
use crate::fragment_set::{base_for, generation};
use crate::kv::Revision;
use crate::spec_gate::SpecGuard;
use crate::store::{SpecRecord, SpecWrite};

impl Specs {
    /// The spec gate, taken for a session change (quotas and allocations are computed under
    /// it, then stored with [`Specs::write_session_piece`]).
    pub async fn take_gate(&self) -> Result<SpecGuard> {
        Ok(self.gate.take().await?)
    }

    /// Session `id`'s piece in node `node`'s spec record, if it holds one.
    pub async fn session_piece(&self, node: &str, id: &str) -> Result<Option<NodeSpec>> {
        Ok(self
            .store
            .spec(node)
            .await?
            .and_then(|mut r| r.sessions.remove(id)))
    }

    /// Sets (`Some`) or removes (`None`) session `session.id`'s piece in its node's spec and
    /// stores `session` (at `revision`, `0`: new) in the same transaction; the node gets a new
    /// generation and is woken; returns the revision it committed at (the new spec epoch). Its
    /// `spec-written` event and `event` (the session's) are
    /// logged together. A piece that would not merge with the node's spec is refused
    /// ([`SpecError::Conflict`]); removing one never is.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_session_piece(
        &self,
        guard: &SpecGuard,
        session: &Session,
        revision: Revision,
        piece: Option<NodeSpec>,
        cred: &Actor,
        why: &str,
        event: Event,
    ) -> Result<(SpecWritten, Revision)> {
        let node = self.live_node(&session.node).await?;
        if piece.is_some() && node.health == Health::Decommissioned {
            return Err(SpecError::Decommissioned(node.id));
        }
        let set = self.stored_set().await?;
        let weight = set.weight(&node.labels);
        let (current, spec_rev) = self.store.spec_rev(&node.id).await?;
        let mut sessions = current.sessions.clone();
        let adding = piece.is_some();
        match piece {
            Some(p) => sessions.insert(session.id.clone(), p),
            None => sessions.remove(&session.id),
        };
        if adding {
            let message = || {
                format!(
                    "session {} does not fit node {}'s spec",
                    session.id, node.id
                )
            };
            self.check(
                &set,
                &current.own,
                &sessions,
                &node.labels,
                &current.payload_overrides,
                message,
            )
            .await?;
        }
        let now = generation(current.base_under(weight), weight);
        let write = SpecWrite {
            node_id: node.id.clone(),
            record: SpecRecord {
                generation: now + 1,
                base: Some(base_for(now + 1, weight)),
                updated_at: Some(Utc::now()),
                sessions,
                ..current
            },
            revision: spec_rev,
            history: None,
        };
        let committed = self
            .store
            .write_session(guard.epoch, &write, session, revision)
            .await?;
        let base = write.record.base.unwrap_or_default();
        self.fleet.set_base(&node.id, None, base);
        let mut spec_event = Event::new(
            EventKind::SpecWritten,
            Some(&node.id),
            None,
            cred,
            format!("generation {} ({why})", now + 1),
        );
        spec_event.generation = Some(now + 1);
        self.events.record_many(vec![spec_event, event]).await?;
        let written = SpecWritten {
            node_id: node.id,
            generation: now + 1,
        };
        Ok((written, committed))
    }
}
