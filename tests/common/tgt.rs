//! tgt's `tgtd` on loopback for the iSCSI tests: one daemon per test, each
//! on its own portal and control port, serving one target whose LUN 1 is
//! an image file.

use super::{free_port, package_tool};
use gfs2fuse::dev::iscsi::IscsiConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the target is set up.
#[derive(Clone, Default)]
pub struct Setup {
    /// LUN 1 logical block size (tgt's default is 512).
    pub block_size: Option<u32>,
    pub read_only: bool,
    /// Incoming CHAP account (user, secret) the initiator must log in with.
    pub chap: Option<(&'static str, &'static str)>,
    /// Outgoing account: the target proves itself with these (mutual CHAP).
    pub mutual: Option<(&'static str, &'static str)>,
}

/// A tgtd on loopback serving one target whose LUN 1 is `img`; killed on drop.
pub struct Tgt {
    pub img: PathBuf,
    pub port: u16,
    pub ctl: u16,
    pub iqn: String,
    pub setup: Setup,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Tgt {
    pub fn start(tag: &str, img: &Path, setup: Setup) -> Tgt {
        let mut last = String::new();
        // A port (or control number) taken meanwhile: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut t = Tgt {
                img: img.to_path_buf(),
                port,
                // The control channel is a Unix socket named after this
                // number, which tgtd wants below 32768.
                ctl: 1 + port % 32000,
                iqn: format!(
                    "iqn.2026-01.org.gfs2-fuse.test:{tag}-{}",
                    std::process::id()
                ),
                setup: setup.clone(),
                child: None,
                log: std::env::temp_dir()
                    .join(format!("gfs2tgt-{tag}-{port}-{}.log", std::process::id())),
            };
            match t.try_spawn() {
                Ok(()) => return t,
                Err(e) => last = e,
            }
        }
        panic!("tgtd would not start: {last}");
    }

    pub fn tgtadm(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(package_tool("tgtadm", "tgt"))
            .args(["-C", &self.ctl.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tgtadm {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn must(&self, args: &[&str]) {
        if let Err(e) = self.tgtadm(args) {
            panic!("{e}\ntgtd log: {}", self.log_text());
        }
    }

    /// A CHAP account bound to the target: the initiator's (`outgoing`
    /// false) or the one the target answers with (mutual CHAP).
    pub fn account(&self, user: &str, password: &str, outgoing: bool) {
        self.must(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            password,
        ]);
        let mut bind = vec![
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.must(&bind);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start tgtd and configure the target (tgtd keeps no configuration).
    pub fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    pub fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(package_tool("tgtd", "tgt"))
            .args(["-f", "-C", &self.ctl.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tgtd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.tgtadm(&["--op", "show", "--mode", "sys"]).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("tgtd exited ({st}): {}", self.log_text()));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "tgtd not answering after 20 s: {}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.must(&[
            "--op", "new", "--mode", "target", "--tid", "1", "-T", &self.iqn,
        ]);
        let img = self.img.to_str().unwrap().to_string();
        let mut lun = vec![
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &img,
        ];
        let bs = self.setup.block_size.map(|b| b.to_string());
        if let Some(b) = &bs {
            lun.extend(["--blocksize", b]);
        }
        self.must(&lun);
        if self.setup.read_only {
            self.set_read_only(true);
        }
        self.must(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]);
        if let Some((u, p)) = self.setup.chap {
            self.account(u, p, false);
        }
        if let Some((u, p)) = self.setup.mutual {
            self.account(u, p, true);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tgtd not listening: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn set_read_only(&self, ro: bool) {
        let p = format!("readonly={}", u8::from(ro));
        self.must(&[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            &p,
        ]);
    }

    /// `iscsi://[creds@]127.0.0.1:PORT/IQN/1`
    pub fn url(&self, creds: &str) -> String {
        format!("iscsi://{creds}127.0.0.1:{}/{}/1", self.port, self.iqn)
    }

    pub fn config(&self, timeout: Duration) -> IscsiConfig {
        let mut c = IscsiConfig::new("127.0.0.1", self.port, &self.iqn, 1);
        c.timeout = timeout;
        c
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL: no goodbye to the initiators.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}", self.ctl));
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}.lock", self.ctl));
    }
}
