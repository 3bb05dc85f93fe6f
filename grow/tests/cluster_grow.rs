//! A grow seen by another node: two library nodes share one image through
//! the in-process lock manager (`lock_mem`). One grows the filesystem
//! (`Fs::append_rgrps`: new resource groups written, then the rindex, under
//! the rindex glock held exclusively); the other, which read the rindex at mount and has
//! been writing since, must then allocate from the new space: its cached
//! rindex glock was invalidated by the grow, so it reads the rindex again
//! before its next transaction (the kernel's `gfs2_rindex_update`). It
//! writes more than the old filesystem could hold; afterwards
//! `fsck.gfs2 -n` is clean and both nodes' statfs show the new size.

use gfs2_lockproto::mem::MemLockManager;
use gfs2_oracle::{fsck_n, mkfs, Scratch};
use gfs2fuse::dev::spec;
use gfs2fuse::fs::{Fs, MountOptions};
use std::sync::Arc;

fn node(img: &str, mgr: &MemLockManager, jid: u32) -> Arc<Fs> {
    let opts = MountOptions {
        lock_module: Some(mgr.proto()),
        locktable: Some("test:grow".into()),
        jid: Some(jid),
        ..Default::default()
    };
    Fs::mount(spec::open(img, false).expect("open"), opts).expect("mount")
}

#[test]
fn other_node_allocates_from_the_new_space() {
    let t = Scratch::new("cluster-grow").expect("scratch");
    let img = t.join("c.img");
    mkfs(&img, 100, &["-p", "lock_nolock", "-j", "2", "-J", "8"]).expect("mkfs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open")
        .set_len(300 << 20)
        .expect("extend");
    let path = img.to_str().expect("utf-8");
    let mgr = MemLockManager::new();
    let a = node(path, &mgr, 0);
    let b = node(path, &mgr, 1);
    let old_total = b.statfs().expect("statfs").blocks;
    let bs = u64::from(b.superblock().bsize);
    // B works before the grow (caching the rindex glock and rgrps).
    let f = b
        .mknod(b.root(), b"before", 0o100644, 0, 0, 0, 0, None)
        .expect("create");
    b.write(f.ino, 0, &vec![7u8; 1 << 20]).expect("write");

    // A grows.
    let dev_blocks = a.device().refresh_size().expect("size") / bs;
    let plan = gfs2_grow::newrgrps::plan(bs as u32, &a.rindex(), dev_blocks).expect("room to grow");
    let gained = a.append_rgrps(&plan.rindex()).expect("append rgrps");
    assert!(gained > 0);

    // B now writes more than the old filesystem held.
    let big = b
        .mknod(b.root(), b"big", 0o100644, 0, 0, 0, 0, None)
        .expect("create on the grown filesystem");
    let chunk = vec![0x5au8; 4 << 20];
    let want = old_total * bs + (16 << 20);
    let mut off = 0u64;
    while off < want {
        b.write(big.ino, off, &chunk)
            .unwrap_or_else(|e| panic!("node B writing at {off} of {want}: {e}"));
        off += chunk.len() as u64;
    }
    assert_eq!(b.rindex().len(), a.rindex().len(), "node B's rindex");
    b.sync().expect("sync");
    let st_b = b.statfs().expect("statfs");
    assert!(
        st_b.blocks >= old_total + gained,
        "node B's statfs: {} blocks, old {old_total} + {gained}",
        st_b.blocks
    );
    b.unmount().expect("unmount B");
    a.unmount().expect("unmount A");
    let f = fsck_n(&img).expect("fsck");
    assert_eq!(f.code, 0, "fsck.gfs2 -n:\n{}", f.output);
}
