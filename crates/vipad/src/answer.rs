//! Keeps the neighbour solicitation responder (`vipa_kernel::responder`) answering for
//! the IPv6 DVIPAs the kernel holds by their local route while their address is still to
//! come (`vipa_core::plan::dvipas_to_answer_for`). With a few DVIPAs (up to 32 at once)
//! the address follows the route within the same plan and the responder is not needed;
//! it starts the first time more are taken over at once, or their addresses are slow to
//! come.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::atomic::Ordering;

use tracing::{error, info, warn};
use vipa_core::model::Observed;
use vipa_core::plan::{self, HeldDvipa};
use vipa_kernel::responder::Responder;

/// What is answered on one NIC: the NIC's link-layer address (none: nothing can be) and
/// the addresses.
type Nic = (Option<[u8; 6]>, BTreeSet<Ipv6Addr>);

#[derive(Default)]
pub struct Answering {
    responder: Option<Responder>,
    /// The responder could not start; said once.
    unavailable: bool,
    /// What it answers for now, by NIC index.
    now: BTreeMap<u32, Nic>,
}

impl Answering {
    /// For `vipactl status`, once the responder has started.
    pub fn summary(&self, observed: &Observed) -> Option<vipa_api::AnsweringSummary> {
        let r = self.responder.as_ref()?;
        Some(vipa_api::AnsweringSummary {
            nics: self.now.iter().map(|(&i, (_, t))| (observed.link_name(i), t.len())).collect(),
            answered: r.counts.answered.load(Ordering::Relaxed),
            invalid: r.counts.invalid.load(Ordering::Relaxed),
        })
    }

    /// Answers for exactly what `held` and the kernel call for, from now on (with
    /// `routes_coming`, also before their routes are in: see `dvipas_to_answer_for`).
    pub fn follow(&mut self, observed: &Observed, held: &[HeldDvipa], routes_coming: bool) {
        let want: BTreeMap<u32, Nic> = plan::dvipas_to_answer_for(observed, held, routes_coming)
            .into_iter()
            .map(|(index, targets)| (index, (observed.links.get(&index).and_then(|l| l.mac), targets)))
            .collect();
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
            let (mac, targets) = match after {
                Some((Some(mac), t)) => (*mac, t.iter().copied().collect()),
                Some((None, _)) => {
                    if before.is_none_or(|(m, _)| m.is_some()) {
                        warn!(%interface, "the NIC has no link-layer address: neighbour solicitations for IPv6 DVIPAs whose address is still to come go unanswered");
                    }
                    ([0; 6], Default::default())
                }
                None => ([0; 6], Default::default()),
            };
            // (Said when the NIC is taken on, not again at every change of its addresses.)
            if let (Err(e), None) = (responder.set(index, mac, targets), before) {
                warn!(%interface, error = %e, "cannot ask the NIC for every multicast frame: for IPv6 DVIPAs whose address is still to come, only solicitations sent straight to this host are answered");
            }
            match (before, after) {
                (None, Some((_, t))) => {
                    info!(%interface, addresses = t.len(), "answering neighbour solicitations for IPv6 DVIPAs until the kernel holds their addresses")
                }
                (Some(_), None) => {
                    info!(%interface, answered = responder.counts.answered.load(Ordering::Relaxed), "no IPv6 DVIPA held here waits for its address any more; the kernel answers for every one")
                }
                _ => {}
            }
        }
        self.now = want;
    }
}
