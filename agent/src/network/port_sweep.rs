//! The `ports_isolated` sweep after the workloads' phase: containers' veths (plugged in by
//! Docker) and VMs' taps appear after the network pass planned the bridges' port flags, so
//! `finish` dumps the links once more, when some bridge asks for isolated ports, and flags the
//! new ports (`plan::port_flags`) before the pass ends, instead of leaving them open until the
//! next pass. With an event feed (daemon) the links observed earlier are reused while no link
//! event came since, as a pass's own observation is: a steady pass dumps nothing more, and a
//! port whose event arrives after this look is flagged by the pass that event starts.

use tracing::{info_span, warn, Instrument};

use super::{plan, NetOutcome, Networks};
use crate::pass::Pass;

impl Networks {
    pub(super) async fn isolate_new_ports(&mut self, out: &mut NetOutcome, pass: &Pass) {
        let bridges = std::mem::take(&mut out.ports_isolated);
        if bridges.is_empty() || pass.superseded().is_some() {
            return;
        }
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        let feed = self.feed.as_deref();
        let observed = match Self::observe(driver, feed, &mut self.cache, false, false, None).await
        {
            Ok((o, _)) => o,
            Err(e) => {
                warn!(error = %e, "cannot look for new ports of ports_isolated bridges");
                return;
            }
        };
        let actions: Vec<_> = (bridges.iter())
            .flat_map(|d| plan::port_flags(d, &observed))
            .collect();
        let before = driver.writes();
        for action in &actions {
            let span = info_span!("net_action", kind = action.kind(), link = %action.resource());
            if let Err(e) = driver.apply(action).instrument(span).await {
                // The next pass (its link event, or the resync) tries again.
                warn!(bridge = %action.resource(), error = %e, "isolating a new port failed");
            }
        }
        out.writes += driver.writes() - before;
        if driver.writes() > before {
            self.cache = None;
        }
    }
}
