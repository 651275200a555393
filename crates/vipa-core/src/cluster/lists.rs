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
//!   settings. While a live peer on the earlier list may take it there (it is its owner or
//!   a backup there and has not deactivated it) or holds it, this node takes it from nobody
//!   and a holder here keeps it; the peer is told this node is no candidate (unless it
//!   holds it), so the nodes on the earlier list decide among themselves. A peer that is no
//!   candidate there is read as declining it. Should both hold it, the node that comes
//!   later in the earlier list's order gives way;
//! - **absent** from the earlier list: the peer does not know it, so it never holds it and
//!   is no candidate. (An address only in the earlier list is told the same way the other
//!   way round.)

use std::collections::BTreeSet;
use std::net::IpAddr;

use vipa_wire::cluster::{bit, set_bit, Heartbeat, FLAG_EARLIER_LIST};

use super::{digest, DvipaConfig};

/// Earlier lists kept, newest first: a node still reads a peer one or two reloads behind
/// it (a change changed again before every node had it).
pub(super) const KEPT: usize = 2;

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

    /// Whether, in the earlier list's order of our DVIPA `i`, node `a` comes before `b`
    /// (one not in it comes after every node in it).
    pub fn comes_before(&self, i: usize, a: &str, b: &str) -> bool {
        let Some((j, _)) = self.ours[i] else { return false };
        let order = self.list[j].order();
        let pos = |n: &str| order.iter().position(|o| *o == n).unwrap_or(usize::MAX);
        pos(a) < pos(b)
    }

    /// Whether our DVIPA `i` is in the earlier list with other settings.
    pub fn changed(&self, i: usize) -> bool {
        matches!(self.ours[i], Some((_, false)))
    }

    /// Whether our DVIPA `i` is in the earlier list with the same settings.
    pub fn same(&self, i: usize) -> bool {
        matches!(self.ours[i], Some((_, true)))
    }

    /// A heartbeat laid out over the earlier list, read over ours (`n` DVIPAs, `digest`):
    /// what the sender says of a changed DVIPA counts but its being busy (its takeback may
    /// differ), and it declines one it is no candidate for in that list (it never takes
    /// it). A sender on that list declines a DVIPA absent from it (it does not know it);
    /// one that speaks it for us ([`FLAG_EARLIER_LIST`]) is on another list, so what it
    /// says of such a DVIPA is unknown (the caller holds it still).
    pub fn read(&self, mut h: Heartbeat, n: usize, digest: u64) -> Heartbeat {
        let on_it = h.flags & FLAG_EARLIER_LIST == 0;
        let mut maps = [(); 4].map(|_| vec![0u8; n.div_ceil(8)]);
        let [held, busy, declined, going] = &mut maps;
        for (i, at) in self.ours.iter().enumerate() {
            match *at {
                Some((j, same)) => {
                    let never = !same && on_it && self.list[j].rank(&h.node).is_none();
                    set_bit(held, i, bit(&h.held, j));
                    set_bit(busy, i, same && bit(&h.busy, j));
                    set_bit(declined, i, bit(&h.declined, j) || never);
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

    /// The bitmaps (held, busy, declined, going) of our heartbeat `h` laid out over the
    /// earlier list, for a peer still on it: this node declines a DVIPA the earlier list
    /// has with other settings (unless it holds it: it keeps it) or that ours does not
    /// have; one of the latter whose address this host still has (`unlisted`: a reload
    /// dropped it, and it is being deleted) is going.
    pub fn layout(&self, h: &Heartbeat, unlisted: &BTreeSet<IpAddr>) -> [Vec<u8>; 4] {
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
                None => {
                    set_bit(declined, j, true);
                    set_bit(going, j, unlisted.contains(&self.list[j].address));
                }
            }
        }
        maps
    }

    /// Our heartbeat `h` for a peer on the earlier list, with `maps` from
    /// [`Known::layout`] (the same while `h`'s do not change).
    pub fn speak(&self, h: &Heartbeat, maps: [Vec<u8>; 4]) -> Heartbeat {
        let mut out = h.clone();
        [out.held, out.busy, out.declined, out.going] = maps;
        out.pins = self.pins(&h.pins, &self.ours);
        (out.digest, out.count) = (self.digest, self.len() as u32);
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
        assert!(k.same(0) && k.changed(1) && !k.same(2) && !k.changed(2));
        let pins = vec![(0, "s2".to_string(), 7), (1, "s2".to_string(), 8), (2, "s2".to_string(), 9)];
        let mut h =
            beat(3, &[[true, true, false, false], [true, true, false, true], [true, false, false, false]], pins);
        h.node = "s1".into();
        let read = k.read(h.clone(), 3, 42);
        assert_eq!((read.digest, read.count), (42, 3));
        // .1 in full; .2 but busy (its takeback may differ); .4 unknown there: declined.
        let expect = vec![[true, true, false, false], [true, false, false, true], [false, false, true, false]];
        assert_eq!(maps(&read, 3), expect);
        // Only the move of the DVIPA that is the same in both lists.
        assert_eq!(read.pins, vec![(0, "s2".to_string(), 7)]);
        // A sender that is no candidate for .2 in the earlier list never takes it: declined.
        h.node = "s9".into();
        assert!(maps(&k.read(h.clone(), 3, 42), 3)[1][2]);
        // One that speaks the earlier list for us is on another: .4 is unknown, not declined.
        h.flags |= FLAG_EARLIER_LIST;
        assert_eq!(maps(&k.read(h, 3, 42), 3)[2], [false; 4]);
    }

    #[test]
    fn a_peer_on_an_earlier_list_is_spoken_to_in_it_and_told_this_node_is_no_candidate_where_they_differ() {
        let (earlier, ours) = lists();
        let k = Known::new(earlier.clone(), &ours);
        // Holding .1 and .2 (busy on both), .4 going.
        let pins = vec![(0, "s3".to_string(), 5), (1, "s3".to_string(), 6), (2, "s3".to_string(), 7)];
        let h = beat(3, &[[true, true, false, false], [true, true, false, false], [false, false, false, true]], pins);
        let none = BTreeSet::new();
        let speak = |h: &Heartbeat, unlisted: &BTreeSet<IpAddr>| k.speak(h, k.layout(h, unlisted));
        let spoken = speak(&h, &none);
        assert_eq!((spoken.digest, spoken.count), (digest(&earlier), 3));
        assert_ne!(spoken.flags & FLAG_EARLIER_LIST, 0);
        // .1 in full; .2 held (kept) but not busy; .3 not known here: declined.
        let expect = vec![[true, true, false, false], [true, false, false, false], [false, false, true, false]];
        assert_eq!(maps(&spoken, 3), expect);
        assert_eq!(spoken.pins, vec![(0, "s3".to_string(), 5)]);
        // .3 still on this host (a reload dropped it while held): going as well.
        let still: BTreeSet<IpAddr> = [IpAddr::from([198, 18, 7, 3])].into();
        assert_eq!(maps(&speak(&h, &still), 3)[2], [false, false, true, true]);
        // Not holding .2 (changed): declined, so that the earlier list's order skips this node.
        let h = beat(3, &[[false; 4], [false; 4], [false; 4]], vec![]);
        assert!(maps(&speak(&h, &none), 3)[1][2]);
    }
}
