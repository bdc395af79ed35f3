//! The inventory lock: one advisory file lock (`inventory.lock` in the cache directory) held
//! by whoever rewrites or removes tag and access records or prunes, in any process: the
//! server's access flush, its prunes and evictions, the admin API's invalidate, and the
//! `prune` and `invalidate` verbs run beside a server. It keeps a flush from writing back a
//! tag record that a prune in another process has just removed. Pulls never take it.
//! [`super::FsStore`]'s [`super::Store::lock_inventory`] hands it out as a [`Lease`].

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use super::backend::{Lease, StoreFuture};

/// The lock file's name, in the cache directory.
pub const LOCK_FILE: &str = "inventory.lock";

/// The held lock; released when dropped (closing the file releases it, also when the
/// process dies).
#[derive(Debug)]
pub struct InventoryLock {
    _file: File,
}

impl InventoryLock {
    /// Waits for the lock of the cache at `root` (blocking); `on_wait` is called once if
    /// another holder makes it wait.
    pub fn acquire(root: &Path, on_wait: impl FnOnce()) -> io::Result<InventoryLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join(LOCK_FILE))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                on_wait();
                flock(&file, FlockOperation::LockExclusive)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(InventoryLock { _file: file })
    }

    /// [`InventoryLock::acquire`] from async code: waits on a blocking thread.
    pub async fn acquire_async(root: PathBuf) -> io::Result<InventoryLock> {
        tokio::task::spawn_blocking(move || {
            InventoryLock::acquire(&root, || {
                tracing::debug!("waiting for the inventory lock held by another process")
            })
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl Lease for InventoryLock {
    fn renew(&self) -> StoreFuture<'_, ()> {
        // A file lock does not expire.
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(self: Box<Self>) -> StoreFuture<'static, ()> {
        drop(self);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_across_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let held = InventoryLock::acquire(dir.path(), || panic!("nobody holds it yet")).unwrap();
        // Another open file (as another process would have) cannot take it meanwhile.
        let other = File::options()
            .read(true)
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        assert_eq!(
            flock(&other, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        // A waiter is told that it waits, and gets the lock once the holder lets go.
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_owned();
        let waiter = std::thread::spawn(move || {
            InventoryLock::acquire(&root, || tx.send(()).unwrap()).map(|_| ())
        });
        rx.recv().unwrap();
        drop(held);
        waiter.join().unwrap().unwrap();
        assert!(
            flock(&other, FlockOperation::NonBlockingLockExclusive).is_ok(),
            "released with the last holder"
        );
    }
}
