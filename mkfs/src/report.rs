//! The closing summary, laid out like gfs2-utils' `print_results` (27-column labels). Sizes in
//! GB are computed in single precision, as gfs2-utils does, so the rounding matches too.

/// What the summary shows.
pub struct Summary<'a> {
    pub device: &'a str,
    pub bsize: u32,
    pub dev_bytes: u64,
    pub fs_blocks: u64,
    pub journals: u32,
    pub jsize_mb: u32,
    pub rgrps: u64,
    pub lockproto: &'a str,
    pub locktable: &'a str,
    pub uuid: &'a str,
}

impl Summary<'_> {
    pub fn render(&self) -> String {
        let gib = (1u32 << 30) as f32;
        let dev_gb = self.dev_bytes as f32 / gib;
        let fs_gb = self.fs_blocks as f32 / gib * self.bsize as f32;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<27}{v}\n"));
        line("Device:", self.device.to_string());
        line("Block size:", self.bsize.to_string());
        line(
            "Device size:",
            format!(
                "{dev_gb:.2} GB ({} blocks)",
                self.dev_bytes / u64::from(self.bsize)
            ),
        );
        line(
            "Filesystem size:",
            format!("{fs_gb:.2} GB ({} blocks)", self.fs_blocks),
        );
        line("Journals:", self.journals.to_string());
        line("Journal size:", format!("{}MB", self.jsize_mb));
        line("Resource groups:", self.rgrps.to_string());
        line("Locking protocol:", format!("\"{}\"", self.lockproto));
        line("Lock table:", format!("\"{}\"", self.locktable));
        line("UUID:", self.uuid.to_string());
        s
    }
}
