//! NFSv4.1 client ids, sessions, slots and leases (RFC 8881 sections 2.4,
//! 2.10, 18.35-18.37, 18.46).
//!
//! A client first names itself (EXCHANGE_ID: an owner string and a boot
//! verifier), then confirms that id by creating a session. Every request
//! afterwards starts with SEQUENCE on one slot of a session: the slot's
//! sequence id tells a new request (`seq + 1`) from a retransmission
//! (`seq`), which gets the cached reply instead of being run twice: this
//! is what makes non-idempotent operations (REMOVE, RENAME, exclusive
//! creates) safe over a connection that breaks. Any SEQUENCE renews the
//! client's lease; a client silent past its lease is expired and its state
//! dropped.

use super::proto::st;
use super::rpc::Conn;
use crate::pnfs::ClientId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session id.
pub type SessionId = [u8; 16];

/// What a slot holds of its last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotReply {
    /// Never used.
    Empty,
    /// Running now.
    InProgress,
    /// Done, reply cached (the whole `COMPOUND4res`).
    Cached(Arc<Vec<u8>>),
    /// Done, reply not cached (the client did not ask and it was large).
    Uncached,
}

/// One slot of a session's fore channel.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Sequence id of the last request accepted on the slot.
    pub seq: u32,
    /// Its reply.
    pub reply: SlotReply,
}

/// What SEQUENCE decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqCheck {
    /// A new request: run it, then [`Slots::finish`].
    New,
    /// A retransmission: send this reply again.
    Replay(Arc<Vec<u8>>),
    /// Refused with this status.
    Refused(u32),
}

/// A session's slot table.
#[derive(Debug, Clone)]
pub struct Slots {
    slots: Vec<Slot>,
}

impl Slots {
    /// `n` slots, all unused.
    pub fn new(n: usize) -> Self {
        Slots {
            slots: vec![
                Slot {
                    seq: 0,
                    reply: SlotReply::Empty,
                };
                n.max(1)
            ],
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never true (a table has at least one slot).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// RFC 8881 section 2.10.6.1: the rules of a slot's sequence ids.
    pub fn check(&mut self, slot: u32, seq: u32) -> SeqCheck {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return SeqCheck::Refused(st::BADSLOT);
        };
        if seq == s.seq.wrapping_add(1) {
            if s.reply == SlotReply::InProgress {
                return SeqCheck::Refused(st::DELAY);
            }
            s.seq = seq;
            s.reply = SlotReply::InProgress;
            return SeqCheck::New;
        }
        if seq == s.seq {
            return match &s.reply {
                SlotReply::InProgress => SeqCheck::Refused(st::DELAY),
                SlotReply::Cached(r) => SeqCheck::Replay(r.clone()),
                SlotReply::Uncached => SeqCheck::Refused(st::RETRY_UNCACHED_REP),
                SlotReply::Empty => SeqCheck::Refused(st::SEQ_MISORDERED),
            };
        }
        SeqCheck::Refused(st::SEQ_MISORDERED)
    }

    /// The request on `slot` is done: keep its reply (or not).
    pub fn finish(&mut self, slot: u32, reply: Option<Arc<Vec<u8>>>) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.reply = match reply {
                Some(r) => SlotReply::Cached(r),
                None => SlotReply::Uncached,
            };
        }
    }
}

/// `channel_attrs4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelAttrs {
    /// `ca_headerpadsize`.
    pub headerpad: u32,
    /// `ca_maxrequestsize`.
    pub max_request: u32,
    /// `ca_maxresponsesize`.
    pub max_response: u32,
    /// `ca_maxresponsesize_cached`.
    pub max_response_cached: u32,
    /// `ca_maxoperations`.
    pub max_ops: u32,
    /// `ca_maxrequests` (slots).
    pub max_requests: u32,
}

/// The session's backchannel: where and how callbacks go.
#[derive(Default)]
pub struct BackChannel {
    /// The connection bound for callbacks (the last one bound wins).
    pub conn: Option<Arc<Conn>>,
    /// The client asked for a backchannel (so a missing one is reported).
    pub wanted: bool,
    /// `csa_cb_program`.
    pub prog: u32,
    /// Sequence id of our slot 0.
    pub seq: u32,
}

/// A session.
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its client.
    pub client: ClientId,
    /// Fore channel limits agreed.
    pub fore: ChannelAttrs,
    /// The fore channel's slots.
    pub slots: Mutex<Slots>,
    /// The backchannel.
    pub back: Mutex<BackChannel>,
}

impl Session {
    /// Whether callbacks can be sent.
    pub fn back_up(&self) -> bool {
        self.back
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conn
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }
}

/// A client record.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// `co_ownerid`.
    pub owner: Vec<u8>,
    /// `co_verifier` (changes when the client reboots).
    pub verifier: [u8; 8],
    /// Confirmed by a CREATE_SESSION.
    pub confirmed: bool,
    /// The CREATE_SESSION sequence id expected next.
    pub cs_seq: u32,
    /// The last CREATE_SESSION's reply (`cs_seq - 1`), for its replay.
    pub cs_reply: Option<Vec<u8>>,
    /// Last renewal.
    pub renewed: Instant,
    /// Its layouts were revoked (fenced): SEQUENCE reports it.
    pub revoked: bool,
}

/// Outcome of EXCHANGE_ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchanged {
    /// The client id.
    pub id: ClientId,
    /// `eir_sequenceid`.
    pub seq: u32,
    /// Already confirmed (`EXCHGID4_FLAG_CONFIRMED_R`).
    pub confirmed: bool,
}

/// Every client and session of the server.
pub struct Registry {
    clients: HashMap<ClientId, Client>,
    sessions: HashMap<SessionId, Arc<Session>>,
    next: u64,
    boot: u32,
}

impl Registry {
    /// An empty registry; `boot` (the server's start time) goes into ids so
    /// that ids of an earlier run are stale.
    pub fn new(boot: u32) -> Self {
        Registry {
            clients: HashMap::new(),
            sessions: HashMap::new(),
            next: 1,
            boot,
        }
    }

    fn new_id(&mut self) -> ClientId {
        let id = (self.boot as u64) << 32 | (self.next & 0xffff_ffff);
        self.next += 1;
        id
    }

    /// EXCHANGE_ID (RFC 8881 section 18.35.5, without the update cases the
    /// Linux client does not use): the same owner and verifier get their id
    /// back; a new verifier (the client rebooted) gets a new, unconfirmed
    /// record, and the old one goes when the new one is confirmed.
    pub fn exchange_id(&mut self, owner: &[u8], verifier: [u8; 8]) -> Exchanged {
        let now = Instant::now();
        let mut found = None;
        for c in self.clients.values() {
            if c.owner == owner && c.verifier == verifier {
                found = Some(c.id);
            }
        }
        if let Some(id) = found {
            if let Some(c) = self.clients.get_mut(&id) {
                c.renewed = now;
                return Exchanged {
                    id,
                    seq: c.cs_seq,
                    confirmed: c.confirmed,
                };
            }
        }
        // An unconfirmed record of the same owner is replaced.
        self.clients.retain(|_, c| c.owner != owner || c.confirmed);
        let id = self.new_id();
        self.clients.insert(
            id,
            Client {
                id,
                owner: owner.to_vec(),
                verifier,
                confirmed: false,
                cs_seq: 1,
                cs_reply: None,
                renewed: now,
                revoked: false,
            },
        );
        Exchanged {
            id,
            seq: 1,
            confirmed: false,
        }
    }

    /// The CREATE_SESSION sequence check: `Ok(None)` to go on, `Ok(Some(r))`
    /// to replay `r`, `Err(status)`.
    pub fn create_session_seq(&mut self, id: ClientId, seq: u32) -> Result<Option<Vec<u8>>, u32> {
        let c = self.clients.get_mut(&id).ok_or(st::STALE_CLIENTID)?;
        if seq == c.cs_seq {
            Ok(None)
        } else if seq == c.cs_seq.wrapping_sub(1) && c.cs_reply.is_some() {
            Ok(c.cs_reply.clone())
        } else {
            Err(st::SEQ_MISORDERED)
        }
    }

    /// A session was created for `id`: confirm the client, remember the
    /// reply for replays. Returns the ids of older records of the same owner
    /// (an earlier boot of the client), now dropped: their state must go.
    pub fn confirm(&mut self, id: ClientId, s: Arc<Session>, reply: Vec<u8>) -> Vec<ClientId> {
        let Some(c) = self.clients.get_mut(&id) else {
            return Vec::new();
        };
        c.confirmed = true;
        c.cs_seq = c.cs_seq.wrapping_add(1);
        c.cs_reply = Some(reply);
        c.renewed = Instant::now();
        let owner = c.owner.clone();
        self.sessions.insert(s.id, s);
        let old: Vec<ClientId> = self
            .clients
            .values()
            .filter(|o| o.owner == owner && o.id != id)
            .map(|o| o.id)
            .collect();
        for &o in &old {
            self.remove_client(o);
        }
        old
    }

    /// A new session id for `client`.
    pub fn session_id(&mut self, client: ClientId) -> SessionId {
        let mut sid = [0u8; 16];
        sid[..8].copy_from_slice(&client.to_be_bytes());
        sid[8..12].copy_from_slice(&(self.next as u32).to_be_bytes());
        sid[12..].copy_from_slice(&self.boot.to_be_bytes());
        self.next += 1;
        sid
    }

    /// A session by id.
    pub fn session(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.get(id).cloned()
    }

    /// A client by id.
    pub fn client(&self, id: ClientId) -> Option<&Client> {
        self.clients.get(&id)
    }

    /// A client by id, to change.
    pub fn client_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        self.clients.get_mut(&id)
    }

    /// SEQUENCE renews the lease.
    pub fn renew(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.renewed = Instant::now();
        }
    }

    /// DESTROY_SESSION.
    pub fn destroy_session(&mut self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.remove(id)
    }

    /// Whether `id` has sessions left (DESTROY_CLIENTID refuses then).
    pub fn has_sessions(&self, id: ClientId) -> bool {
        self.sessions.values().any(|s| s.client == id)
    }

    /// Drop a client and its sessions.
    pub fn remove_client(&mut self, id: ClientId) -> bool {
        self.sessions.retain(|_, s| s.client != id);
        self.clients.remove(&id).is_some()
    }

    /// Clients whose lease ran out, removed; their state must go.
    pub fn expire(&mut self, lease: Duration) -> Vec<ClientId> {
        let now = Instant::now();
        let dead: Vec<ClientId> = self
            .clients
            .values()
            .filter(|c| now.duration_since(c.renewed) > lease)
            .map(|c| c.id)
            .collect();
        for &id in &dead {
            self.remove_client(id);
        }
        dead
    }

    /// The sessions of a client.
    pub fn sessions_of(&self, id: ClientId) -> Vec<Arc<Session>> {
        self.sessions
            .values()
            .filter(|s| s.client == id)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sequence_rules() {
        let mut s = Slots::new(2);
        // The first request of a slot has sequence id 1.
        assert_eq!(s.check(0, 0), SeqCheck::Refused(st::SEQ_MISORDERED));
        assert_eq!(s.check(0, 2), SeqCheck::Refused(st::SEQ_MISORDERED));
        assert_eq!(s.check(0, 1), SeqCheck::New);
        // A retransmission while it runs: try again later.
        assert_eq!(s.check(0, 1), SeqCheck::Refused(st::DELAY));
        let r = Arc::new(vec![1, 2, 3]);
        s.finish(0, Some(r.clone()));
        // Retransmission: the cached reply, as many times as asked.
        assert_eq!(s.check(0, 1), SeqCheck::Replay(r.clone()));
        assert_eq!(s.check(0, 1), SeqCheck::Replay(r));
        // Misordered both ways.
        assert_eq!(s.check(0, 3), SeqCheck::Refused(st::SEQ_MISORDERED));
        assert_eq!(s.check(0, 0), SeqCheck::Refused(st::SEQ_MISORDERED));
        assert_eq!(s.check(0, 2), SeqCheck::New);
        s.finish(0, None);
        assert_eq!(s.check(0, 2), SeqCheck::Refused(st::RETRY_UNCACHED_REP));
        // Slots are independent; a slot past the table is refused.
        assert_eq!(s.check(1, 1), SeqCheck::New);
        assert_eq!(s.check(2, 1), SeqCheck::Refused(st::BADSLOT));
        // Sequence ids wrap.
        let mut w = Slots::new(1);
        w.slots[0].seq = u32::MAX;
        w.slots[0].reply = SlotReply::Uncached;
        assert_eq!(w.check(0, 0), SeqCheck::New);
    }

    #[test]
    fn client_ids_and_reboots() {
        let mut r = Registry::new(7);
        let a = r.exchange_id(b"host-a", [1; 8]);
        assert!(!a.confirmed);
        // Same owner and verifier: the same id.
        assert_eq!(r.exchange_id(b"host-a", [1; 8]).id, a.id);
        // CREATE_SESSION: sequence checked, replayed, misordered.
        assert_eq!(r.create_session_seq(a.id, 1), Ok(None));
        let sid = r.session_id(a.id);
        let s = Arc::new(Session {
            id: sid,
            client: a.id,
            fore: ChannelAttrs::default(),
            slots: Mutex::new(Slots::new(1)),
            back: Mutex::new(BackChannel::default()),
        });
        assert!(r.confirm(a.id, s, vec![9]).is_empty());
        assert_eq!(r.create_session_seq(a.id, 1), Ok(Some(vec![9])));
        assert_eq!(r.create_session_seq(a.id, 5), Err(st::SEQ_MISORDERED));
        assert_eq!(r.create_session_seq(12345, 1), Err(st::STALE_CLIENTID));
        assert!(r.exchange_id(b"host-a", [1; 8]).confirmed);
        // The client rebooted: a new id; the old goes once it is confirmed.
        let b = r.exchange_id(b"host-a", [2; 8]);
        assert_ne!(b.id, a.id);
        assert!(r.client(a.id).is_some());
        let sid = r.session_id(b.id);
        let s = Arc::new(Session {
            id: sid,
            client: b.id,
            fore: ChannelAttrs::default(),
            slots: Mutex::new(Slots::new(1)),
            back: Mutex::new(BackChannel::default()),
        });
        assert_eq!(r.confirm(b.id, s, vec![]), vec![a.id]);
        assert!(r.client(a.id).is_none() && r.has_sessions(b.id));
        // Leases.
        assert!(r.expire(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r.expire(Duration::from_millis(1)), vec![b.id]);
        assert!(!r.has_sessions(b.id));
    }
}
