//! Earlier DVIPA lists, for rolling changes: a node reloaded with a new `[[dvipa]]` list
//! keeps the lists it carried before, and reads and speaks to each peer still on one of
//! them in that list. Heartbeats lay their bitmaps out over the sender's list (by
//! position), so a peer on a list this node does not know cannot be read at all; one on a
//! list it knows can, DVIPA by DVIPA, wherever the two lists agree on the address.
//!
//! A DVIPA of this node's list stands one of three ways in an earlier one:
//!
//! - **the same** (address, owner, backups and takeback): both read each other's state of
//!   it in full; takeovers and handovers go on as if the lists matched;
//! - **changed** (same address, other settings): each node would pick its holder by its own
//!   settings, so while such a peer is alive nobody takes it and a holder keeps it, as
//!   when the lists cannot be read at all; the peer is told this node is no candidate;
//! - **absent** from the earlier list: the peer does not know it, so it never holds it and
//!   is no candidate. (An address only in the earlier list is told the same way the other
//!   way round.)

use vipa_wire::cluster::{bit, set_bit, Heartbeat, FLAG_EARLIER_LIST};

use super::{digest, DvipaConfig};

/// Earlier lists kept, newest first: a rolling change that is itself changed again before
/// every node has it still reads every node.
pub const KEPT: usize = 2;

/// One earlier list and how it maps to this node's.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub digest: u64,
    /// The list itself (to map it to the next list after another reload).
    pub list: Vec<DvipaConfig>,
    /// For each DVIPA of the earlier list: its index in ours, and whether its settings are
    /// the same.
    theirs: Vec<Option<(usize, bool)>>,
    /// For each DVIPA of ours: its index in the earlier list, and whether the same.
    ours: Vec<Option<(usize, bool)>>,
}

impl Known {
    /// `list` (sorted by address, as every list) against `ours`.
    pub fn new(list: Vec<DvipaConfig>, ours: &[DvipaConfig]) -> Known {
        let mut theirs = vec![None; list.len()];
        let mut mine = vec![None; ours.len()];
        for (j, d) in list.iter().enumerate() {
            if let Ok(i) = ours.binary_search_by_key(&d.address, |o| o.address) {
                let same = settings(d) == settings(&ours[i]);
                theirs[j] = Some((i, same));
                mine[i] = Some((j, same));
            }
        }
        Known { digest: digest(&list), list, theirs, ours: mine }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether our DVIPA `i` is in the earlier list with other settings.
    pub fn changed(&self, i: usize) -> bool {
        matches!(self.ours[i], Some((_, false)))
    }

    /// Whether our DVIPA `i` is not in the earlier list.
    pub fn absent(&self, i: usize) -> bool {
        self.ours[i].is_none()
    }

    /// A heartbeat laid out over the earlier list, read over ours (`n` DVIPAs, `digest`):
    /// what the sender says of a changed DVIPA counts but its being busy (its takeback may
    /// differ). A sender on that list declines a DVIPA absent from it (it does not know
    /// it); one that speaks it for us ([`FLAG_EARLIER_LIST`]) is on another list, so what
    /// it says of such a DVIPA is unknown (the caller holds it still).
    pub fn read(&self, mut h: Heartbeat, n: usize, digest: u64) -> Heartbeat {
        let on_it = h.flags & FLAG_EARLIER_LIST == 0;
        let mut maps = [(); 4].map(|_| vec![0u8; n.div_ceil(8)]);
        let [held, busy, declined, going] = &mut maps;
        for (i, at) in self.ours.iter().enumerate() {
            match *at {
                Some((j, same)) => {
                    set_bit(held, i, bit(&h.held, j));
                    set_bit(busy, i, same && bit(&h.busy, j));
                    set_bit(declined, i, bit(&h.declined, j));
                    set_bit(going, i, bit(&h.going, j));
                }
                None => set_bit(declined, i, on_it),
            }
        }
        [h.held, h.busy, h.declined, h.going] = maps;
        h.pins = self.pins(&h.pins, &self.theirs);
        (h.digest, h.count) = (digest, n as u32);
        h
    }

    /// Our heartbeat `h` laid out over the earlier list, for a peer still on it: this node
    /// declines a DVIPA the earlier list has with other settings (unless it holds it: it
    /// keeps it) or that ours does not have.
    pub fn speak(&self, h: &Heartbeat) -> Heartbeat {
        let n = self.len();
        let mut maps = [(); 4].map(|_| vec![0u8; n.div_ceil(8)]);
        let [held, busy, declined, going] = &mut maps;
        for (j, at) in self.theirs.iter().enumerate() {
            match *at {
                Some((i, same)) => {
                    let holds = bit(&h.held, i);
                    set_bit(held, j, holds);
                    set_bit(busy, j, same && bit(&h.busy, i));
                    set_bit(declined, j, bit(&h.declined, i) || (!same && !holds));
                    set_bit(going, j, bit(&h.going, i));
                }
                None => set_bit(declined, j, true),
            }
        }
        let mut out = h.clone();
        [out.held, out.busy, out.declined, out.going] = maps;
        out.pins = self.pins(&h.pins, &self.ours);
        (out.digest, out.count) = (self.digest, n as u32);
        out.flags |= FLAG_EARLIER_LIST;
        out
    }

    /// Planned moves of DVIPAs that are the same in both lists, renumbered by `map`.
    fn pins(&self, pins: &[(u32, String, u64)], map: &[Option<(usize, bool)>]) -> Vec<(u32, String, u64)> {
        pins.iter()
            .filter_map(|(k, node, stamp)| match map.get(*k as usize).copied().flatten() {
                Some((to, true)) => Some((to as u32, node.clone(), *stamp)),
                _ => None,
            })
            .collect()
    }
}

/// What must agree for two lists' DVIPA to be read as one (the address aside).
fn settings(d: &DvipaConfig) -> (&str, &[(String, u8)], u8) {
    (&d.owner, &d.backups, d.takeback as u8)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::cluster::Takeback;

    fn dvipa(last: u8, owner: &str) -> DvipaConfig {
        DvipaConfig {
            address: IpAddr::from([198, 18, 7, last]),
            owner: owner.into(),
            backups: vec![("s2".into(), 100)],
            takeback: Takeback::Immediate,
            announce: vec![],
        }
    }

    fn maps(h: &Heartbeat, n: usize) -> Vec<[bool; 4]> {
        (0..n).map(|i| [bit(&h.held, i), bit(&h.busy, i), bit(&h.declined, i), bit(&h.going, i)]).collect()
    }

    fn beat(n: usize, bits: &[[bool; 4]], pins: Vec<(u32, String, u64)>) -> Heartbeat {
        let mut h = Heartbeat { count: n as u32, pins, ..Default::default() };
        for m in [&mut h.held, &mut h.busy, &mut h.declined, &mut h.going] {
            *m = vec![0; n.div_ceil(8)];
        }
        for (i, b) in bits.iter().enumerate() {
            set_bit(&mut h.held, i, b[0]);
            set_bit(&mut h.busy, i, b[1]);
            set_bit(&mut h.declined, i, b[2]);
            set_bit(&mut h.going, i, b[3]);
        }
        h
    }

    /// The earlier list has .1 (kept), .2 (its owner changed since) and .3 (removed); ours
    /// has .1, .2 and .4 (new).
    fn lists() -> (Vec<DvipaConfig>, Vec<DvipaConfig>) {
        (vec![dvipa(1, "s1"), dvipa(2, "s1"), dvipa(3, "s1")], vec![dvipa(1, "s1"), dvipa(2, "s3"), dvipa(4, "s1")])
    }

    #[test]
    fn a_peer_on_an_earlier_list_is_read_dvipa_by_dvipa_and_declines_what_it_does_not_know() {
        let (earlier, ours) = lists();
        let k = Known::new(earlier, &ours);
        assert!(!k.changed(0) && k.changed(1) && !k.changed(2));
        let pins = vec![(0, "s2".to_string(), 7), (1, "s2".to_string(), 8), (2, "s2".to_string(), 9)];
        let h = beat(3, &[[true, true, false, false], [true, true, false, true], [true, false, false, false]], pins);
        let read = k.read(h, 3, 42);
        assert_eq!((read.digest, read.count), (42, 3));
        // .1 in full; .2 but busy (its takeback may differ); .4 unknown there: declined.
        assert_eq!(
            maps(&read, 3),
            vec![[true, true, false, false], [true, false, false, true], [false, false, true, false]]
        );
        // Only the move of the DVIPA that is the same in both lists.
        assert_eq!(read.pins, vec![(0, "s2".to_string(), 7)]);
    }

    #[test]
    fn a_peer_on_an_earlier_list_is_spoken_to_in_it_and_told_this_node_is_no_candidate_where_they_differ() {
        let (earlier, ours) = lists();
        let k = Known::new(earlier.clone(), &ours);
        // Holding .1 and .2 (busy on both), .4 going.
        let pins = vec![(0, "s3".to_string(), 5), (1, "s3".to_string(), 6), (2, "s3".to_string(), 7)];
        let h = beat(3, &[[true, true, false, false], [true, true, false, false], [false, false, false, true]], pins);
        let spoken = k.speak(&h);
        assert_eq!((spoken.digest, spoken.count), (digest(&earlier), 3));
        // .1 in full; .2 held (kept) but not busy; .3 not known here: declined.
        assert_eq!(
            maps(&spoken, 3),
            vec![[true, true, false, false], [true, false, false, false], [false, false, true, false]]
        );
        assert_eq!(spoken.pins, vec![(0, "s3".to_string(), 5)]);
        // Not holding .2 (changed): declined, so that the earlier list's order skips this node.
        let h = beat(3, &[[false; 4], [false; 4], [false; 4]], vec![]);
        assert!(maps(&k.speak(&h), 3)[1][2]);
    }
}
