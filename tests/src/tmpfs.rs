//! A small tmpfs for disk-full tests: mounted on a temp dir, filled to a chosen free space,
//! unmounted on drop. Needs root (`mount -t tmpfs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a temp dir, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size_mib` MiB; `None` (after a loud message) where mounting is not allowed
    /// outside CI; under `CI=true` a failure panics.
    pub fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let msg = format!("cannot mount a tmpfs (needs root): {other:?}");
                if crate::in_ci() {
                    panic!("{msg} (CI=true: the test fails)");
                }
                eprintln!("\n!!!!!!!!!! SKIPPING TEST: {msg} !!!!!!!!!!\n");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes available to unprivileged writers.
    pub fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(self.path()).expect("statvfs");
        st.f_bavail * st.f_frsize
    }

    /// Writes a filler file leaving about `leave` bytes free; returns its path.
    pub fn fill_leaving(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write;
        let p = self.path().join(name);
        let size = self.free().saturating_sub(leave);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).expect("filler"));
        // tmpfs allocates on write: real bytes (set_len would be sparse).
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).expect("write filler");
            left -= n as u64;
        }
        w.flush().expect("flush filler");
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
