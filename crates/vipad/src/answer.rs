//! Keeps the neighbour solicitation responder (`vipa_kernel::responder`) answering for
//! the IPv6 DVIPAs the kernel holds by their local route while their address is still to
//! come (`vipa_core::plan::dvipas_to_answer_for`). With a few DVIPAs the address follows
//! the route within the same plan and the responder is never needed; it starts the first
//! time thousands are taken over at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use tracing::{error, info, warn};
use vipa_core::model::Observed;
use vipa_core::plan::{self, HeldDvipa};
use vipa_kernel::responder::Responder;

#[derive(Default)]
pub struct Answering {
    responder: Option<Responder>,
    /// The responder could not start; said once.
    unavailable: bool,
    /// What it answers for now, by NIC index.
    now: BTreeMap<u32, BTreeSet<Ipv6Addr>>,
}

impl Answering {
    /// Answers for exactly what `held` and the kernel call for, from now on.
    pub fn follow(&mut self, observed: &Observed, held: &[HeldDvipa]) {
        let want = plan::dvipas_to_answer_for(observed, held);
        if want == self.now {
            return;
        }
        if self.responder.is_none() && !want.is_empty() && !self.unavailable {
            match Responder::start() {
                Ok(r) => self.responder = Some(r),
                Err(e) => {
                    self.unavailable = true;
                    error!(error = %e, "cannot answer neighbour solicitations: IPv6 DVIPAs taken over by the thousand are reachable only by neighbours that heard the announcement until their addresses are on the NIC");
                }
            }
        }
        let Some(responder) = &self.responder else {
            self.now = want;
            return;
        };
        let nics: BTreeSet<u32> = want.keys().chain(self.now.keys()).copied().collect();
        for index in nics {
            let (before, after) = (self.now.get(&index), want.get(&index));
            if before == after {
                continue;
            }
            let interface = observed.link_name(index);
            let mac = observed.links.get(&index).and_then(|l| l.mac).unwrap_or_default();
            let targets = after.map(|t| t.iter().copied().collect()).unwrap_or_default();
            if let Err(e) = responder.set(index, mac, targets) {
                warn!(%interface, error = %e, "cannot receive every multicast frame; neighbour solicitations for IPv6 DVIPAs whose address is still to come go unanswered");
            }
            match (before, after) {
                (None, Some(t)) => {
                    info!(%interface, addresses = t.len(), "answering neighbour solicitations for IPv6 DVIPAs until the kernel holds their addresses")
                }
                (Some(_), None) => {
                    info!(%interface, answered = responder.counts.answered.load(std::sync::atomic::Ordering::Relaxed), "every IPv6 DVIPA held is an address on the NIC again; the kernel answers for them")
                }
                _ => {}
            }
        }
        self.now = want;
    }
}
