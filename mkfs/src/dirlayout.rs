//! Laying out a directory whose entries are all known in advance.
//!
//! gfs2-utils grows directories one entry at a time (stuffed, then a leaf
//! with a hash table, then leaf splits and table doublings). mkfs knows every
//! entry up front, so it computes the end state directly: a stuffed dinode
//! when the entries fit in it, otherwise an exhash directory whose leaves
//! each cover an aligned run of hash-table slots, split just enough for the
//! entries to fit. The kernel and fsck.gfs2 accept any layout that keeps
//! those invariants.

use gfs2_ondisk::{dirent_size, hash, Dinode, Dirent, Inum, Leaf, DIR_MAX_DEPTH};

/// One directory entry to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub inum: Inum,
    pub dt: u16,
}

impl Entry {
    pub fn new(name: &str, inum: Inum, dt: u16) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            inum,
            dt,
        }
    }

    fn hash(&self) -> u32 {
        hash::dirent_hash(&self.name)
    }
}

/// Pack `entries` as dirent records into `area` (the space after a dinode or
/// leaf header); the last record takes the rest of the area. An empty list
/// writes one unused record covering the area.
pub fn pack(area: &mut [u8], entries: &[&Entry]) -> Result<(), String> {
    let total: usize = entries.iter().map(|e| dirent_size(e.name.len())).sum();
    if total > area.len() || area.len() > usize::from(u16::MAX) {
        return Err(format!(
            "{} directory entries need {total} bytes, {} available",
            entries.len(),
            area.len()
        ));
    }
    if entries.is_empty() {
        let d = Dirent {
            rec_len: area.len() as u16,
            ..Dirent::default()
        };
        return d.write(area).map_err(|e| e.to_string());
    }
    let mut off = 0;
    for (i, e) in entries.iter().enumerate() {
        let rec = if i + 1 == entries.len() {
            area.len() - off
        } else {
            dirent_size(e.name.len())
        };
        let d = Dirent {
            inum: e.inum,
            hash: e.hash(),
            rec_len: rec as u16,
            name_len: e.name.len() as u16,
            de_type: e.dt,
            ..Dirent::default()
        };
        d.write(&mut area[off..]).map_err(|e| e.to_string())?;
        area[off + Dirent::SIZE..off + Dirent::SIZE + e.name.len()].copy_from_slice(&e.name);
        off += rec;
    }
    Ok(())
}

/// Whether the entries fit stuffed in the dinode block.
pub fn fits_stuffed(bsize: u32, entries: &[Entry]) -> bool {
    let total: usize = entries.iter().map(|e| dirent_size(e.name.len())).sum();
    total <= bsize as usize - Dinode::SIZE
}

/// A leaf of an exhash directory: the hash-table slots it covers and its
/// entries.
#[derive(Debug, Clone)]
pub struct LeafPlan<'a> {
    /// First hash-table slot pointing at this leaf.
    pub start: u64,
    /// `lf_depth`: the leaf covers `1 << (depth - lf_depth)` slots.
    pub lf_depth: u16,
    pub entries: Vec<&'a Entry>,
}

/// The hash-table depth and leaves of an exhash directory holding `entries`.
/// The depth starts where the kernel starts a new exhash directory (a table
/// of half a block) and grows only if one hash prefix has too many entries.
pub fn plan_exhash(bsize: u32, entries: &[Entry]) -> Result<(u16, Vec<LeafPlan<'_>>), String> {
    let cap = bsize as usize - Leaf::SIZE;
    let mut depth = (bsize / 16).trailing_zeros() as u16;
    'depth: while depth <= DIR_MAX_DEPTH {
        let mut sorted: Vec<&Entry> = entries.iter().collect();
        sorted.sort_by_key(|e| e.hash());
        let mut leaves = Vec::new();
        // Work list of (first slot, lf_depth, entries).
        let mut work = vec![(0u64, 0u16, sorted)];
        while let Some((start, lfd, ents)) = work.pop() {
            let size: usize = ents.iter().map(|e| dirent_size(e.name.len())).sum();
            if size <= cap && ents.len() <= usize::from(u16::MAX) {
                leaves.push(LeafPlan {
                    start,
                    lf_depth: lfd,
                    entries: ents,
                });
                continue;
            }
            if lfd == depth {
                depth += 1;
                continue 'depth;
            }
            let half = 1u64 << (depth - lfd - 1);
            let slot = |e: &Entry| u64::from(e.hash()) >> (32 - u32::from(depth));
            let (lo, hi): (Vec<&Entry>, Vec<&Entry>) =
                ents.into_iter().partition(|e| slot(e) < start + half);
            work.push((start + half, lfd + 1, hi));
            work.push((start, lfd + 1, lo));
        }
        leaves.sort_by_key(|l| l.start);
        return Ok((depth, leaves));
    }
    Err(format!(
        "{} directory entries do not fit a hash table of depth {DIR_MAX_DEPTH}",
        entries.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                Entry::new(
                    &format!("statfs_change{i}"),
                    Inum {
                        formal_ino: i as u64 + 1,
                        addr: 100 + i as u64,
                    },
                    8,
                )
            })
            .collect()
    }

    #[test]
    fn leaves_cover_the_table_and_hold_their_hashes() {
        for (bsize, n) in [(512u32, 26usize), (512, 300), (1024, 100), (4096, 5000)] {
            let e = ents(n);
            let (depth, leaves) = plan_exhash(bsize, &e).unwrap();
            let mut next = 0u64;
            let mut count = 0;
            for l in &leaves {
                assert_eq!(l.start, next, "leaves are contiguous");
                let span = 1u64 << (depth - l.lf_depth);
                assert_eq!(l.start % span, 0, "leaf aligned to its span");
                for x in &l.entries {
                    let s = u64::from(x.hash()) >> (32 - u32::from(depth));
                    assert!(s >= l.start && s < l.start + span);
                }
                let mut blk = vec![0u8; bsize as usize];
                pack(&mut blk[Leaf::SIZE..], &l.entries).unwrap();
                count += l.entries.len();
                next += span;
            }
            assert_eq!(next, 1u64 << depth);
            assert_eq!(count, n);
        }
    }
}
