//! New metadata trees for repairs: a system file rebuilt, or the rindex
//! rewritten longer than the blocks it has, gets data blocks and as many
//! levels of indirect blocks as it needs (height 1 while the pointers fit
//! in the dinode). Blocks come either as one run free in the bitmaps,
//! before or during the walk (the walk then claims them when it reaches the
//! file), or one by one from what the walk left free, claimed at once (after
//! the walk, when the expected state of every block is known).

use super::*;

/// How a repair's new blocks are found.
#[derive(Clone, Copy)]
pub(super) enum Alloc {
    /// Before or during the walk: one run of blocks free in the bitmaps,
    /// marked used there; the walk claims them through the file's tree.
    Run,
    /// After the walk: block by block, claimed for inode `idx` at once
    /// (its block count follows).
    Claim(u64),
}

/// The indirect blocks per level (lowest first) a tree of `nblocks` data
/// blocks needs: none while the dinode's pointers hold them all.
fn levels(bsize: u32, nblocks: u64) -> Vec<u64> {
    let inptrs = layout::inptrs(bsize);
    let mut levels = Vec::new();
    let mut count = nblocks;
    while count > layout::diptrs(bsize) {
        count = count.div_ceil(inptrs);
        levels.push(count);
    }
    levels
}

impl Fsck {
    /// Give dinode `di` (its block being `b`) a new tree of `nblocks` data
    /// blocks (at least one), block `l` at address `p` holding `data(l, p)`
    /// (short ones padded with zeros): blocks found as
    /// `how` says, indirect blocks written, the dinode's pointers, height
    /// and block count set in `di` and `b` (the caller writes the dinode).
    /// With [`Alloc::Run`], the indirect blocks come first (top level
    /// first), then the data blocks, as mkfs lays out a system file.
    pub(super) fn write_tree(
        &mut self,
        di: &mut Dinode,
        b: &mut [u8],
        nblocks: u64,
        data: &mut dyn FnMut(u64, u64) -> Res<Vec<u8>>,
        how: Alloc,
    ) -> Res<()> {
        let bs = self.bsize as usize;
        if nblocks == 0 {
            return Err(Fatal("a tree without data blocks".into()));
        }
        let levels = levels(self.bsize, nblocks);
        if levels.len() + 1 > usize::from(gfs2_ondisk::MAX_META_HEIGHT) {
            return Err(Fatal(format!("a file of {nblocks} blocks is too large")));
        }
        let nind: u64 = levels.iter().sum();
        let total = nblocks + nind;
        let addrs: Vec<u64> = match how {
            Alloc::Run => {
                let start = self
                    .alloc_run(total)
                    .ok_or_else(|| Fatal(format!("no run of {total} free blocks")))?;
                (start..start + total).collect()
            }
            Alloc::Claim(idx) => {
                let mut v = Vec::with_capacity(total as usize);
                for k in 0..total {
                    let blk = self
                        .alloc(idx, k < nind)
                        .ok_or_else(|| Fatal(format!("no free block for {total} new blocks")))?;
                    v.push(blk);
                }
                v
            }
        };
        // Indirect blocks first (top level first), then the data blocks.
        let mut level_start = Vec::new();
        let mut at = 0usize;
        for &c in levels.iter().rev() {
            level_start.push(at);
            at += c as usize;
        }
        level_start.reverse(); // lowest level first, as `levels`
        let data_at = at;
        for l in 0..nblocks {
            let p = addrs[data_at + l as usize];
            let mut d = data(l, p)?;
            d.resize(bs, 0);
            self.write(p, d);
        }
        // Pointers: each level points at the one below (data for the lowest).
        let inptrs = layout::inptrs(self.bsize);
        let mut below_at = data_at;
        let mut below_count = nblocks;
        for (k, &c) in levels.iter().enumerate() {
            for i in 0..c {
                let mut ib = vec![0u8; bs];
                MetaHeader::new(metatype::IN, format::IN).write(&mut ib)?;
                for s in 0..inptrs {
                    let child = i * inptrs + s;
                    if child >= below_count {
                        break;
                    }
                    put_be64(
                        &mut ib,
                        MetaHeader::SIZE + 8 * s as usize,
                        addrs[below_at + child as usize],
                    );
                }
                self.write(addrs[level_start[k] + i as usize], ib);
            }
            below_at = level_start[k];
            below_count = c;
        }
        b[Dinode::SIZE..].fill(0);
        for s in 0..below_count {
            put_be64(
                b,
                Dinode::SIZE + 8 * s as usize,
                addrs[below_at + s as usize],
            );
        }
        di.height = levels.len() as u16 + 1;
        di.blocks = 1 + total;
        Ok(())
    }

    /// Give back a block claimed for inode `idx` (a tree being replaced):
    /// free in the expected state and the bitmap, no longer counted.
    pub(super) fn release(&mut self, blk: u64, idx: u64) {
        let others = self.owner_of(blk).is_some_and(|o| o != idx);
        if want_get(&self.want, blk) == W_FREE || self.rg_of(blk).is_none() || others {
            return;
        }
        want_set(&mut self.want, blk, W_FREE);
        self.owner.remove(&blk);
        self.set_bit(blk, BlockState::Free);
        let ino = self.ino(idx);
        ino.blocks = ino.blocks.saturating_sub(1);
    }
}
