//! Open and layout stateids (RFC 8881 sections 8.2, 12.5.3).
//!
//! A stateid is a sequence id and 12 opaque bytes naming one piece of
//! state: an open of a file by an open-owner, or the layouts of a client on
//! a file. The sequence id moves each time the state changes (an upgrade,
//! a downgrade, each LAYOUTGET and LAYOUTRETURN), so a client can order
//! replies; sequence id 0 in a request means "the current one".
//!
//! An open holds the inode open in the filesystem ([`crate::fs::Fs::open_inode`])
//! so that a file removed while a client has it open lives until CLOSE or
//! until the client goes away, as with a local open.

use super::proto::st;
use super::xdr::{Dec, Enc, XResult};
use crate::pnfs::ClientId;
use std::collections::HashMap;

/// `stateid4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stateid {
    /// `seqid`.
    pub seq: u32,
    /// `other`.
    pub other: [u8; 12],
}

impl Stateid {
    /// The anonymous stateid (all zeros).
    pub const ANON: Stateid = Stateid {
        seq: 0,
        other: [0; 12],
    };
    /// The READ bypass stateid (all ones).
    pub const BYPASS: Stateid = Stateid {
        seq: u32::MAX,
        other: [0xff; 12],
    };
    /// The "current stateid" of a COMPOUND (seqid 1, other zero).
    pub const CURRENT: Stateid = Stateid {
        seq: 1,
        other: [0; 12],
    };
    /// The invalid special stateid.
    pub const INVALID: Stateid = Stateid {
        seq: u32::MAX,
        other: [0; 12],
    };

    /// Decode.
    pub fn decode(d: &mut Dec<'_>) -> XResult<Stateid> {
        Ok(Stateid {
            seq: d.u32()?,
            other: d.array()?,
        })
    }

    /// Encode.
    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.seq).fixed(&self.other);
    }

    /// One of the special stateids (anonymous, bypass).
    pub fn is_special(&self) -> bool {
        *self == Self::ANON || *self == Self::BYPASS
    }
}

/// An open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The client.
    pub client: ClientId,
    /// The open-owner.
    pub owner: Vec<u8>,
    /// The file.
    pub ino: u64,
    /// Current sequence id.
    pub seq: u32,
    /// `OPEN4_SHARE_ACCESS_*` granted.
    pub access: u32,
}

/// The layouts a client holds on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutState {
    /// The client.
    pub client: ClientId,
    /// The file.
    pub ino: u64,
    /// Current sequence id.
    pub seq: u32,
}

/// What a stateid names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An open.
    Open(Open),
    /// Layouts.
    Layout(LayoutState),
}

/// Every stateid of the server.
pub struct StateTable {
    boot: u32,
    next: u64,
    states: HashMap<[u8; 12], Kind>,
    opens: HashMap<(ClientId, Vec<u8>, u64), [u8; 12]>,
    layouts: HashMap<(ClientId, u64), [u8; 12]>,
}

/// What an OPEN did to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The open's stateid.
    pub stateid: Stateid,
    /// A new open (the inode must be held open), not an upgrade.
    pub new: bool,
}

impl StateTable {
    /// An empty table; `boot` goes into every stateid.
    pub fn new(boot: u32) -> Self {
        StateTable {
            boot,
            next: 1,
            states: HashMap::new(),
            opens: HashMap::new(),
            layouts: HashMap::new(),
        }
    }

    fn other(&mut self) -> [u8; 12] {
        let mut o = [0u8; 12];
        o[..4].copy_from_slice(&self.boot.to_be_bytes());
        o[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        o
    }

    /// OPEN by `owner` of `ino`: a new open, or an upgrade of the owner's
    /// open of that file (access bits added, sequence id moved).
    pub fn open(&mut self, client: ClientId, owner: &[u8], ino: u64, access: u32) -> Opened {
        let key = (client, owner.to_vec(), ino);
        if let Some(o) = self.opens.get(&key).copied() {
            if let Some(Kind::Open(op)) = self.states.get_mut(&o) {
                op.seq = op.seq.wrapping_add(1).max(1);
                op.access |= access;
                return Opened {
                    stateid: Stateid {
                        seq: op.seq,
                        other: o,
                    },
                    new: false,
                };
            }
        }
        let o = self.other();
        self.states.insert(
            o,
            Kind::Open(Open {
                client,
                owner: owner.to_vec(),
                ino,
                seq: 1,
                access,
            }),
        );
        self.opens.insert(key, o);
        Opened {
            stateid: Stateid { seq: 1, other: o },
            new: true,
        }
    }

    /// Check a stateid's sequence id against the state's: 0 means the
    /// current one; an older one is `OLD_STATEID`, a newer one `BAD_STATEID`.
    fn check_seq(asked: u32, cur: u32) -> Result<(), u32> {
        if asked == 0 || asked == cur {
            Ok(())
        } else if asked < cur {
            Err(st::OLD_STATEID)
        } else {
            Err(st::BAD_STATEID)
        }
    }

    /// The open a stateid names, checked.
    pub fn get_open(&self, s: &Stateid) -> Result<&Open, u32> {
        match self.states.get(&s.other) {
            Some(Kind::Open(o)) => Self::check_seq(s.seq, o.seq).map(|_| o),
            Some(Kind::Layout(_)) => Err(st::BAD_STATEID),
            None => Err(self.unknown(s)),
        }
    }

    fn unknown(&self, s: &Stateid) -> u32 {
        if s.other[..4] == self.boot.to_be_bytes() {
            st::BAD_STATEID
        } else {
            st::STALE_STATEID
        }
    }

    /// May `client` do I/O on `ino` (for writing: `write`) with `s`?
    /// Special stateids and a layout stateid of the file pass; an open
    /// must be of that file and cover the access.
    pub fn check_io(
        &self,
        client: ClientId,
        s: &Stateid,
        ino: u64,
        write: bool,
    ) -> Result<(), u32> {
        if s.is_special() {
            return Ok(());
        }
        match self.states.get(&s.other) {
            Some(Kind::Open(o)) => {
                if o.client != client || o.ino != ino {
                    return Err(st::BAD_STATEID);
                }
                Self::check_seq(s.seq, o.seq)?;
                let need = if write {
                    super::proto::OPEN4_SHARE_ACCESS_WRITE
                } else {
                    super::proto::OPEN4_SHARE_ACCESS_READ
                };
                // A read through a write-only open is allowed, as nfsd does.
                if o.access & need == 0 && write {
                    return Err(st::OPENMODE);
                }
                Ok(())
            }
            Some(Kind::Layout(l)) if l.client == client && l.ino == ino => Ok(()),
            Some(Kind::Layout(_)) => Err(st::BAD_STATEID),
            None => Err(self.unknown(s)),
        }
    }

    /// CLOSE: the open goes; returns its inode (to be released).
    pub fn close(&mut self, client: ClientId, s: &Stateid) -> Result<u64, u32> {
        let o = self.get_open(s)?.clone();
        if o.client != client {
            return Err(st::BAD_STATEID);
        }
        self.states.remove(&s.other);
        self.opens.remove(&(o.client, o.owner, o.ino));
        Ok(o.ino)
    }

    /// OPEN_DOWNGRADE to `access` (a subset of what is held).
    pub fn downgrade(
        &mut self,
        client: ClientId,
        s: &Stateid,
        access: u32,
    ) -> Result<Stateid, u32> {
        let cur = self.get_open(s)?.clone();
        if cur.client != client {
            return Err(st::BAD_STATEID);
        }
        if access == 0 || access & !cur.access != 0 {
            return Err(st::INVAL);
        }
        match self.states.get_mut(&s.other) {
            Some(Kind::Open(o)) => {
                o.access = access;
                o.seq = o.seq.wrapping_add(1).max(1);
                Ok(Stateid {
                    seq: o.seq,
                    other: s.other,
                })
            }
            _ => Err(st::BAD_STATEID),
        }
    }

    /// LAYOUTGET granted: the client's layout stateid of `ino`, created or
    /// moved on.
    pub fn layout_get(&mut self, client: ClientId, ino: u64) -> Stateid {
        if let Some(o) = self.layouts.get(&(client, ino)).copied() {
            if let Some(Kind::Layout(l)) = self.states.get_mut(&o) {
                l.seq = l.seq.wrapping_add(1).max(1);
                return Stateid {
                    seq: l.seq,
                    other: o,
                };
            }
        }
        let o = self.other();
        self.states.insert(
            o,
            Kind::Layout(LayoutState {
                client,
                ino,
                seq: 1,
            }),
        );
        self.layouts.insert((client, ino), o);
        Stateid { seq: 1, other: o }
    }

    /// The stateid a LAYOUTGET presents must be an open (or lock, or
    /// delegation) stateid of the file, or its layout stateid.
    pub fn check_layout_arg(&self, client: ClientId, s: &Stateid, ino: u64) -> Result<(), u32> {
        match self.states.get(&s.other) {
            Some(Kind::Open(o)) if o.client == client && o.ino == ino => Ok(()),
            Some(Kind::Layout(l)) if l.client == client && l.ino == ino => Ok(()),
            Some(_) => Err(st::BAD_STATEID),
            None => Err(self.unknown(s)),
        }
    }

    /// The current layout stateid of `client` on `ino`, if any.
    pub fn layout_of(&self, client: ClientId, ino: u64) -> Option<Stateid> {
        let o = self.layouts.get(&(client, ino))?;
        match self.states.get(o) {
            Some(Kind::Layout(l)) => Some(Stateid {
                seq: l.seq,
                other: *o,
            }),
            _ => None,
        }
    }

    /// A CB_LAYOUTRECALL is about to be sent: the layout stateid's
    /// sequence id moves on (RFC 8881 section 12.5.3: every LAYOUTGET,
    /// LAYOUTRETURN and CB_LAYOUTRECALL does), and the recall carries the
    /// new one; a client seeing an old one answers `NFS4ERR_OLD_STATEID`.
    pub fn layout_recall(&mut self, client: ClientId, ino: u64) -> Option<Stateid> {
        let o = self.layouts.get(&(client, ino)).copied()?;
        match self.states.get_mut(&o) {
            Some(Kind::Layout(l)) => {
                l.seq = l.seq.wrapping_add(1).max(1);
                Some(Stateid {
                    seq: l.seq,
                    other: o,
                })
            }
            _ => None,
        }
    }

    /// LAYOUTRETURN of (part of) a file: the stateid moves on and stays
    /// while `keep` (some layout of the file is left), else it goes.
    pub fn layout_return(&mut self, client: ClientId, ino: u64, keep: bool) -> Option<Stateid> {
        let o = self.layouts.get(&(client, ino)).copied()?;
        if !keep {
            self.layouts.remove(&(client, ino));
            self.states.remove(&o);
            return None;
        }
        match self.states.get_mut(&o) {
            Some(Kind::Layout(l)) => {
                l.seq = l.seq.wrapping_add(1).max(1);
                Some(Stateid {
                    seq: l.seq,
                    other: o,
                })
            }
            _ => None,
        }
    }

    /// Every layout state of `client` goes (LAYOUTRETURN of all, fencing).
    pub fn drop_layouts(&mut self, client: ClientId) -> Vec<u64> {
        let gone: Vec<(ClientId, u64)> = self
            .layouts
            .keys()
            .filter(|k| k.0 == client)
            .copied()
            .collect();
        for k in &gone {
            if let Some(o) = self.layouts.remove(k) {
                self.states.remove(&o);
            }
        }
        gone.into_iter().map(|k| k.1).collect()
    }

    /// TEST_STATEID of one stateid.
    pub fn test(&self, client: ClientId, s: &Stateid) -> u32 {
        match self.states.get(&s.other) {
            Some(Kind::Open(o)) if o.client == client => {
                Self::check_seq(s.seq, o.seq).err().unwrap_or(st::OK)
            }
            Some(Kind::Layout(l)) if l.client == client => {
                Self::check_seq(s.seq, l.seq).err().unwrap_or(st::OK)
            }
            Some(_) => st::BAD_STATEID,
            None => self.unknown(s),
        }
    }

    /// FREE_STATEID: layouts may be freed; an open must be closed
    /// (`LOCKS_HELD`).
    pub fn free(&mut self, client: ClientId, s: &Stateid) -> u32 {
        match self.states.get(&s.other) {
            Some(Kind::Layout(l)) if l.client == client => {
                let key = (l.client, l.ino);
                self.layouts.remove(&key);
                self.states.remove(&s.other);
                st::OK
            }
            Some(Kind::Open(o)) if o.client == client => 10037, // NFS4ERR_LOCKS_HELD
            Some(_) => st::BAD_STATEID,
            None => self.unknown(s),
        }
    }

    /// The client went away: every state of it goes; returns the inodes of
    /// its opens (one entry per open, to be released).
    pub fn client_gone(&mut self, client: ClientId) -> Vec<u64> {
        self.drop_layouts(client);
        let gone: Vec<(ClientId, Vec<u8>, u64)> = self
            .opens
            .keys()
            .filter(|k| k.0 == client)
            .cloned()
            .collect();
        let mut inos = Vec::new();
        for k in gone {
            if let Some(o) = self.opens.remove(&k) {
                self.states.remove(&o);
            }
            inos.push(k.2);
        }
        inos
    }

    /// Whether any open holds `ino`.
    pub fn is_open(&self, ino: u64) -> bool {
        self.opens.keys().any(|k| k.2 == ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_upgrade_downgrade_close() {
        let mut t = StateTable::new(5);
        let a = t.open(1, b"o", 100, 1);
        assert!(a.new && a.stateid.seq == 1);
        let b = t.open(1, b"o", 100, 2);
        assert!(!b.new && b.stateid.other == a.stateid.other && b.stateid.seq == 2);
        // The old sequence id is old now; 0 means current.
        assert_eq!(t.check_io(1, &a.stateid, 100, false), Err(st::OLD_STATEID));
        let cur = Stateid {
            seq: 0,
            ..a.stateid
        };
        assert_eq!(t.check_io(1, &cur, 100, true), Ok(()));
        assert_eq!(t.check_io(1, &cur, 101, true), Err(st::BAD_STATEID));
        assert_eq!(t.check_io(2, &cur, 100, true), Err(st::BAD_STATEID));
        let d = t.downgrade(1, &b.stateid, 1).unwrap();
        assert_eq!(d.seq, 3);
        assert_eq!(t.check_io(1, &d, 100, true), Err(st::OPENMODE));
        assert_eq!(t.downgrade(1, &d, 3), Err(st::INVAL));
        assert_eq!(t.free(1, &d), 10037);
        assert!(t.is_open(100));
        assert_eq!(t.close(1, &d), Ok(100));
        assert!(!t.is_open(100));
        assert_eq!(t.test(1, &d), st::BAD_STATEID);
        // A stateid of another server run is stale.
        let mut other = d;
        other.other[0] ^= 0xff;
        assert_eq!(t.test(1, &other), st::STALE_STATEID);
        assert_eq!(t.check_io(1, &Stateid::ANON, 7, true), Ok(()));
    }

    #[test]
    fn layouts_and_client_gone() {
        let mut t = StateTable::new(5);
        let o = t.open(9, b"x", 200, 3);
        assert_eq!(t.check_layout_arg(9, &o.stateid, 200), Ok(()));
        assert_eq!(t.check_layout_arg(9, &o.stateid, 201), Err(st::BAD_STATEID));
        let l1 = t.layout_get(9, 200);
        let l2 = t.layout_get(9, 200);
        assert_eq!((l1.other, l1.seq + 1), (l2.other, l2.seq));
        assert_eq!(t.layout_of(9, 200), Some(l2));
        let rc = t.layout_recall(9, 200).unwrap();
        assert_eq!((rc.other, rc.seq), (l2.other, l2.seq + 1));
        let r = t.layout_return(9, 200, true).unwrap();
        assert_eq!(r.seq, rc.seq + 1);
        assert_eq!(t.layout_return(9, 200, false), None);
        assert_eq!(t.layout_of(9, 200), None);
        t.layout_get(9, 201);
        t.open(9, b"y", 201, 1);
        let mut inos = t.client_gone(9);
        inos.sort();
        assert_eq!(inos, vec![200, 201]);
        assert_eq!(t.test(9, &o.stateid), st::BAD_STATEID);
        assert_eq!(t.layout_of(9, 201), None);
    }
}
