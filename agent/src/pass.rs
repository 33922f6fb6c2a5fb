//! One reconcile pass's handle: whether a newer generation of the spec has arrived (asked by
//! every apply loop between two actions, so the newer spec takes over at the next safe step and
//! never in the middle of an action), and how far the pass has got (the [`Board`] the heartbeat
//! reports to the registry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use steward_proto::{NodeStatus, PassProgress};

/// The newest generation received, whatever the pass is applying.
pub type Newest = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The progress of the pass in progress, shared with the heartbeat; empty between passes.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Option<PassProgress>>>);

impl Board {
    /// What the heartbeat sends: the pass in progress, if any.
    pub fn snapshot(&self) -> Option<PassProgress> {
        self.lock().clone()
    }

    /// The pass is over: nothing to report until the next one.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PassProgress>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut PassProgress)) {
        if let Some(p) = self.lock().as_mut() {
            f(p);
        }
    }
}

/// One pass over one generation.
pub struct Pass {
    generation: u64,
    newest: Option<Newest>,
    board: Board,
    /// The newer generation that stopped this pass (0: none); once set, it stays.
    stopped_by: AtomicU64,
}

/// How a pass ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every phase ran to its end: the status may claim this generation as observed.
    Applied(NodeStatus),
    /// A newer generation arrived and the pass stopped between two actions: nothing of it may
    /// be reported as observed.
    Superseded { by: u64, progress: PassProgress },
}

impl Pass {
    /// A pass over `generation` reporting to `board`, stopped early once `newest` names a
    /// later generation.
    pub fn new(generation: u64, board: Board, newest: Newest) -> Self {
        *board.lock() = Some(PassProgress {
            generation,
            done: 0,
            total: 0,
            phase: "networks".into(),
            started_at: Utc::now(),
        });
        Self {
            generation,
            newest: Some(newest),
            board,
            stopped_by: AtomicU64::new(0),
        }
    }

    /// A pass nothing can supersede (`apply --file` once), reporting to no one.
    pub fn unbounded(generation: u64) -> Self {
        let mut pass = Self::new(generation, Board::default(), Arc::new(move || generation));
        pass.newest = None;
        pass
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Asked before each action: `Some(newer)` when a newer generation has arrived, in which
    /// case the caller skips the action and every later one. Once it has answered `Some`, it
    /// always does, so later phases skip theirs too.
    pub fn superseded(&self) -> Option<u64> {
        let by = self.stopped_by.load(Ordering::Relaxed);
        if by != 0 {
            return Some(by);
        }
        let newest = self.newest.as_ref().map(|f| f())?;
        if newest <= self.generation {
            return None;
        }
        self.stopped_by.store(newest, Ordering::Relaxed);
        Some(newest)
    }

    /// The newer generation that stopped this pass, if one did (without asking again).
    pub fn stopped_by(&self) -> Option<u64> {
        Some(self.stopped_by.load(Ordering::Relaxed)).filter(|g| *g != 0)
    }

    /// The pass moves on to `phase`.
    pub fn phase(&self, phase: &str) {
        self.board.update(|p| p.phase = phase.to_string());
    }

    /// A phase planned `n` actions.
    pub fn planned(&self, n: usize) {
        self.board.update(|p| p.total += n as u64);
    }

    /// One action was carried out (successfully or not).
    pub fn step(&self) {
        self.board.update(|p| p.done += 1);
    }

    /// The progress so far.
    pub fn progress(&self) -> Option<PassProgress> {
        self.board.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_newer_generation_supersedes_and_stays_so() {
        let newest = Arc::new(AtomicU64::new(3));
        let n = newest.clone();
        let pass = Pass::new(
            3,
            Board::default(),
            Arc::new(move || n.load(Ordering::Relaxed)),
        );
        assert_eq!(
            pass.superseded(),
            None,
            "the same generation again is no takeover"
        );
        assert_eq!(pass.stopped_by(), None);
        newest.store(5, Ordering::Relaxed);
        assert_eq!(pass.superseded(), Some(5));
        newest.store(6, Ordering::Relaxed);
        assert_eq!(pass.superseded(), Some(5), "the first answer sticks");
        assert_eq!(pass.stopped_by(), Some(5));
    }

    #[test]
    fn progress_is_on_the_board_until_cleared() {
        let board = Board::default();
        let pass = Pass::new(7, board.clone(), Arc::new(|| 7));
        pass.phase("containers");
        pass.planned(3);
        pass.step();
        let p = board.snapshot().expect("a pass in progress");
        assert_eq!((p.generation, p.done, p.total), (7, 1, 3));
        assert_eq!(p.phase, "containers");
        board.clear();
        assert_eq!(board.snapshot(), None, "nothing between passes");
    }

    #[test]
    fn an_unbounded_pass_is_never_superseded() {
        let pass = Pass::unbounded(2);
        assert_eq!(pass.superseded(), None);
    }
}
