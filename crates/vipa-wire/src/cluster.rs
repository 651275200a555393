//! The cluster heartbeat: one UDP datagram per node and interval, carrying that node's
//! claims on every DVIPA as bitmaps over the cluster's DVIPA list, authenticated with
//! HMAC-SHA256 over the whole message.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        magic "VIPA"                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version (1)  |   type (1)    |            flags              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  incarnation (64, per boot)                   |
//! |                  sequence (64, per message)                   |
//! |                  config digest (64)                           |
//! |                  echo (64): the sequence of the probe answered |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  heartbeat interval, µs (32)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | name length   |  node name ...                                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  DVIPA count (32)                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | held | busy | declined | going bitmaps (⌈count/8⌉ bytes each)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | pin count (16) | pins: DVIPA index (32), name (empty: ended), stamp (64) ... |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  HMAC-SHA256 (256) over all of the above      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The HMAC is checked before anything else is read, so unauthenticated bytes are never
//! parsed. A heartbeat with [`FLAG_PROBE`] asks its receiver for an immediate
//! [`Heartbeat::answer`]: a message flagged [`FLAG_ANSWER`] that claims nothing and whose
//! `echo` is the probe's sequence number (0 in every other message). That is how a node
//! that missed a peer's heartbeat finds out at once whether the peer lives. 10,000 DVIPAs take 5,000 bytes of bitmaps: one datagram.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAGIC: &[u8; 4] = b"VIPA";
/// 3: the `going` bitmap.
pub const VERSION: u8 = 3;
pub const TYPE_HEARTBEAT: u8 = 1;
/// The sender has just started and does not claim anything yet.
pub const FLAG_SYNCING: u16 = 1;
/// The sender missed the receiver's heartbeats and asks for one back at once.
pub const FLAG_PROBE: u16 = 2;
/// The sender's vipad is stopping: it holds nothing any more and is gone from now on.
pub const FLAG_LEAVING: u16 = 4;
/// The answer to a probe: proof of life only, no claims (see [`Heartbeat::answer`]).
pub const FLAG_ANSWER: u16 = 8;
/// Nothing new: the sender's claims and flags are those of its last heartbeat. A receiver
/// may read it late, by its arrival time; everything else wants reading at once.
pub const FLAG_ROUTINE: u16 = 16;
/// The sender does not receive the cluster's multicast group (it has none configured, or
/// could not join it): its peers send it their routine heartbeats by unicast.
pub const FLAG_UNICAST: u16 = 32;
/// Laid out in a DVIPA list the sender had before a reload, for a receiver it believes
/// still on that list: the sender's own list is another (DVIPAs not in this one are not
/// told of), and the receiver, if on another list too, answers in its own.
pub const FLAG_EARLIER_LIST: u16 = 64;
/// Where the low byte of the flags is in a datagram (for a socket filter that tells
/// routine heartbeats from the rest before they are authenticated).
pub const FLAGS_LOW_BYTE: u32 = 7;
pub const MAC_LEN: usize = 32;
/// Longest node name.
pub const MAX_NAME: usize = 63;
/// Largest DVIPA count a heartbeat may carry (fits one datagram).
pub const MAX_DVIPAS: u32 = 100_000;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("not authenticated (wrong key or altered)")]
    Unauthenticated,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// A heartbeat, as validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    pub flags: u16,
    pub incarnation: u64,
    pub seq: u64,
    /// A digest of the sender's DVIPA list; in an answer, the incarnation of the probe's
    /// sender (so an answer given to an earlier run of that node cannot pass for one now).
    pub digest: u64,
    /// The sequence number of the probe this heartbeat answers; 0 if none.
    pub echo: u64,
    pub interval_us: u32,
    pub node: String,
    pub count: u32,
    /// Bit i: the sender holds DVIPA i.
    pub held: Vec<u8>,
    /// Bit i: the sender has connections on DVIPA i (for when-idle takeback).
    pub busy: Vec<u8>,
    /// Bit i: the sender was told not to hold DVIPA i (deactivated).
    pub declined: Vec<u8>,
    /// Bit i: the sender gave DVIPA i up and its kernel still has the address (thousands
    /// take seconds to delete): no node activates it until the bit clears. Not a claim: a
    /// node that holds it keeps it.
    pub going: Vec<u8>,
    /// Planned moves: (DVIPA index, node that is to hold it, Lamport stamp; the highest
    /// stamp wins).
    pub pins: Vec<(u32, String, u64)>,
}

/// Reads bit `i` of a bitmap.
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets bit `i` of a bitmap (growing it as needed).
pub fn set_bit(map: &mut Vec<u8>, i: usize, on: bool) {
    if map.len() <= i / 8 {
        map.resize(i / 8 + 1, 0);
    }
    if on {
        map[i / 8] |= 1 << (i % 8);
    } else {
        map[i / 8] &= !(1 << (i % 8));
    }
}

fn bitmap_len(count: u32) -> usize {
    (count as usize).div_ceil(8)
}

/// The cluster key, ready to sign and check with: the HMAC state after the key is taken
/// in, made once (each message then starts from a copy, not from the key's two hashes).
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        // HMAC takes keys of any length; this cannot fail.
        Key(<Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length"))
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.0.clone()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeartbeatError> {
        let end = self.at.checked_add(n).ok_or(HeartbeatError::Malformed("length overflow"))?;
        let s = self.b.get(self.at..end).ok_or(HeartbeatError::Malformed("truncated"))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, HeartbeatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HeartbeatError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, HeartbeatError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, HeartbeatError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn name(&mut self) -> Result<String, HeartbeatError> {
        let s = self.name_or_empty()?;
        if s.is_empty() {
            return Err(HeartbeatError::Malformed("bad name length"));
        }
        Ok(s)
    }
    fn name_or_empty(&mut self) -> Result<String, HeartbeatError> {
        let n = usize::from(self.u8()?);
        if n > MAX_NAME {
            return Err(HeartbeatError::Malformed("bad name length"));
        }
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| HeartbeatError::Malformed("name not UTF-8"))?;
        Ok(s.to_string())
    }
}

impl Heartbeat {
    /// The answer of node `node` (incarnation `incarnation`, whose last heartbeat had
    /// sequence number `seq`) to `probe`. It carries no claims: it counts only when its
    /// `echo` matches a probe its receiver has outstanding, so a replayed answer proves
    /// nothing. It also echoes the prober's incarnation (in `digest`); its `seq` tells the
    /// prober that a heartbeat of this node numbered below it is older than the answer.
    pub fn answer(node: &str, incarnation: u64, seq: u64, probe: &Heartbeat) -> Heartbeat {
        Heartbeat {
            flags: FLAG_ANSWER,
            incarnation,
            seq,
            digest: probe.incarnation,
            echo: probe.seq,
            interval_us: probe.interval_us,
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// How many bytes [`Heartbeat::emit`] makes of it.
    pub fn emitted_len(&self) -> usize {
        let pins: usize =
            self.pins.iter().take(u16::MAX as usize).map(|(_, n, _)| 4 + 1 + n.len().min(MAX_NAME) + 8).sum();
        4 + 1
            + 1
            + 2
            + 4 * 8
            + 4
            + 1
            + self.node.len().min(MAX_NAME)
            + 4
            + 4 * bitmap_len(self.count)
            + 2
            + pins
            + MAC_LEN
    }

    /// The datagram, with its HMAC.
    pub fn emit(&self, key: &Key) -> Vec<u8> {
        let len = bitmap_len(self.count);
        let mut b = Vec::with_capacity(self.emitted_len());
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.push(TYPE_HEARTBEAT);
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.digest.to_be_bytes());
        b.extend_from_slice(&self.echo.to_be_bytes());
        b.extend_from_slice(&self.interval_us.to_be_bytes());
        let name = &self.node.as_bytes()[..self.node.len().min(MAX_NAME)];
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        b.extend_from_slice(&self.count.to_be_bytes());
        for map in [&self.held, &self.busy, &self.declined, &self.going] {
            let m = &map[..map.len().min(len)];
            b.extend_from_slice(m);
            b.resize(b.len() + (len - m.len()), 0);
        }
        b.extend_from_slice(&(self.pins.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for (i, n, stamp) in self.pins.iter().take(u16::MAX as usize) {
            b.extend_from_slice(&i.to_be_bytes());
            let n = &n.as_bytes()[..n.len().min(MAX_NAME)];
            b.push(n.len() as u8);
            b.extend_from_slice(n);
            b.extend_from_slice(&stamp.to_be_bytes());
        }
        let tag = key.mac().chain_update(&b).finalize().into_bytes();
        b.extend_from_slice(&tag);
        b
    }

    /// Authenticates, then parses. Total over arbitrary bytes.
    pub fn parse(bytes: &[u8], key: &Key) -> Result<Heartbeat, HeartbeatError> {
        if bytes.len() < MAC_LEN + 8 {
            return Err(HeartbeatError::Malformed("too short"));
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        key.mac().chain_update(body).verify_slice(tag).map_err(|_| HeartbeatError::Unauthenticated)?;
        let mut r = Reader { b: body, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(HeartbeatError::Malformed("bad magic"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(HeartbeatError::Version(version));
        }
        if r.u8()? != TYPE_HEARTBEAT {
            return Err(HeartbeatError::Malformed("unknown message type"));
        }
        let mut h = Heartbeat {
            flags: r.u16()?,
            incarnation: r.u64()?,
            seq: r.u64()?,
            digest: r.u64()?,
            echo: r.u64()?,
            interval_us: r.u32()?,
            node: r.name()?,
            count: r.u32()?,
            ..Default::default()
        };
        if h.count > MAX_DVIPAS {
            return Err(HeartbeatError::Malformed("too many DVIPAs"));
        }
        let len = bitmap_len(h.count);
        h.held = r.take(len)?.to_vec();
        h.busy = r.take(len)?.to_vec();
        h.declined = r.take(len)?.to_vec();
        h.going = r.take(len)?.to_vec();
        let pins = r.u16()?;
        for _ in 0..pins {
            let i = r.u32()?;
            if i >= h.count {
                return Err(HeartbeatError::Malformed("pin beyond the DVIPA list"));
            }
            // An empty name is a move that ended.
            let name = r.name_or_empty()?;
            h.pins.push((i, name, r.u64()?));
        }
        if r.at != body.len() {
            return Err(HeartbeatError::Malformed("trailing bytes"));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    static KEY: std::sync::LazyLock<Key> = std::sync::LazyLock::new(|| Key::new(SECRET));

    fn sample() -> Heartbeat {
        let mut h = Heartbeat {
            flags: FLAG_PROBE,
            incarnation: 7,
            seq: 42,
            echo: 41,
            digest: 0xdead_beef,
            interval_us: 100_000,
            node: "s1".into(),
            count: 20,
            pins: vec![(3, "s2".into(), 9), (5, String::new(), 10)],
            ..Default::default()
        };
        set_bit(&mut h.held, 0, true);
        set_bit(&mut h.held, 19, true);
        set_bit(&mut h.busy, 19, true);
        set_bit(&mut h.going, 7, true);
        h
    }

    #[test]
    fn round_trips_and_pads_bitmaps() {
        let h = sample();
        let b = h.emit(&KEY);
        let p = Heartbeat::parse(&b, &KEY).unwrap();
        // The tag is HMAC-SHA256 of the secret over the rest, whatever the key kept between
        // messages (a second message is signed alike).
        let (body, tag) = b.split_at(b.len() - MAC_LEN);
        let fresh = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).unwrap().chain_update(body).finalize().into_bytes();
        assert_eq!(tag, &fresh[..]);
        assert_eq!(h.emit(&KEY), b);
        assert!(bit(&p.held, 0) && bit(&p.held, 19) && !bit(&p.held, 1));
        assert!(bit(&p.busy, 19));
        assert_eq!(p.declined, vec![0, 0, 0]);
        assert_eq!(p.going, vec![0x80, 0, 0]);
        assert_eq!(p.pins, h.pins);
        assert_eq!((p.seq, p.incarnation, p.echo, p.node.as_str()), (42, 7, 41, "s1"));
        assert_eq!(p.flags, FLAG_PROBE);
    }

    #[test]
    fn the_routine_flag_is_where_a_socket_filter_looks() {
        let mut h = sample();
        h.flags = FLAG_ROUTINE;
        assert_eq!(h.emit(&KEY)[FLAGS_LOW_BYTE as usize], FLAG_ROUTINE as u8);
        h.flags = FLAG_PROBE;
        assert_eq!(h.emit(&KEY)[FLAGS_LOW_BYTE as usize] & FLAG_ROUTINE as u8, 0);
    }

    #[test]
    fn wrong_key_or_any_flipped_bit_is_unauthenticated() {
        let b = sample().emit(&KEY);
        assert_eq!(
            Heartbeat::parse(&b, &Key::new(b"another key, also 32 bytes long!")),
            Err(HeartbeatError::Unauthenticated)
        );
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(Heartbeat::parse(&c, &KEY).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn other_versions_are_refused_even_when_authenticated() {
        let mut b = sample().emit(&KEY);
        b.truncate(b.len() - MAC_LEN);
        b[4] = 9;
        let tag = KEY.mac().chain_update(&b).finalize().into_bytes();
        b.extend_from_slice(&tag);
        assert_eq!(Heartbeat::parse(&b, &KEY), Err(HeartbeatError::Version(9)));
    }

    fn signed(body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        b.extend_from_slice(&KEY.mac().chain_update(body).finalize().into_bytes());
        b
    }

    #[test]
    fn authenticated_garbage_is_malformed_not_a_panic() {
        let mut state: u32 = 0xace1;
        for len in 0..200 {
            let body = crate::noise(&mut state, len);
            assert!(Heartbeat::parse(&signed(&body), &KEY).is_err());
            assert!(Heartbeat::parse(&body, &KEY).is_err());
        }
        // A valid heartbeat cut short anywhere, correctly signed: every field's check is
        // reached, and each cut is refused.
        let mut whole = sample().emit(&KEY);
        whole.truncate(whole.len() - MAC_LEN);
        for cut in 0..whole.len() {
            assert!(Heartbeat::parse(&signed(&whole[..cut]), &KEY).is_err(), "cut at {cut}");
        }
        // The same with everything after the magic and version scrambled: never a panic.
        for _ in 0..500 {
            let mut b = whole.clone();
            let noise = crate::noise(&mut state, b.len() - 5);
            for (i, n) in noise.into_iter().enumerate() {
                if n % 3 == 0 {
                    b[5 + i] = n;
                }
            }
            let _ = Heartbeat::parse(&signed(&b), &KEY);
        }
    }

    #[test]
    fn emitted_len_is_the_datagrams_length() {
        let mut h = sample();
        assert_eq!(h.emitted_len(), h.emit(&KEY).len());
        h.count = 10_000;
        h.pins.push((9_999, "a-node-name-of-some-length".into(), u64::MAX));
        assert_eq!(h.emitted_len(), h.emit(&KEY).len());
    }

    #[test]
    fn ten_thousand_dvipas_fit_one_datagram() {
        let mut h = sample();
        h.count = 10_000;
        h.pins.clear();
        assert!(h.emit(&KEY).len() < 5_200);
    }
}
