//! Reading byte ranges of shard files and replacing shard files atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};
use crate::platform;

/// Bytes `[start, end)` of a shard file, zero-filled past what the file holds.
pub struct RangeRead {
    pub buf: Vec<u8>,
    /// How many bytes from `start` were actually read from the file.
    pub avail: usize,
    /// Why fewer bytes than asked were read, when that happened.
    pub problem: Option<Problem>,
}

/// What kept a range from being read in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Short,
    Unreadable,
}

/// Read `[start, end)` of `path`; never fails: a missing, short or unreadable file yields
/// zeros with `avail` and `problem` saying so, and the caller's hash check rejects them.
pub fn read_range(path: &Path, start: u64, end: u64) -> RangeRead {
    let want = (end - start) as usize;
    let mut buf = vec![0u8; want];
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let problem = if e.kind() == io::ErrorKind::NotFound {
                Problem::Missing
            } else {
                Problem::Unreadable
            };
            return RangeRead {
                buf,
                avail: 0,
                problem: Some(problem),
            };
        }
    };
    let (avail, problem) = read_full_at(&file, &mut buf, start);
    RangeRead {
        buf,
        avail,
        problem,
    }
}

/// Read `path` from `start` into `buf` (zero-filled past what the file holds): how many
/// bytes were real, and why not all of them were if so.
pub fn read_range_into(path: &Path, start: u64, buf: &mut [u8]) -> (usize, Option<Problem>) {
    let (avail, problem) = match File::open(path) {
        Ok(file) => read_full_at(&file, buf, start),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, Some(Problem::Missing)),
        Err(_) => (0, Some(Problem::Unreadable)),
    };
    buf[avail..].fill(0);
    (avail, problem)
}

/// pread until `buf` is full or the file ends; reports how far it got.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> (usize, Option<Problem>) {
    let mut done = 0;
    while done < buf.len() {
        match platform::read_at(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => return (done, Some(Problem::Short)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (done, Some(Problem::Unreadable)),
        }
    }
    (done, None)
}

/// fsync a directory so that renames and creations in it are durable (a no-op where the
/// OS journals them; see [`platform::sync_dir`]).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    platform::sync_dir(dir).at(dir)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written next to its final path and renamed over it only once complete and synced.
pub struct AtomicFile {
    /// Always `Some` until `commit` or `drop` closes it.
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    /// Create a temporary file in `dest`'s directory (creating the directory if needed).
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).at(dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            ".{}.repair-{}-{}",
            name.unwrap_or_default(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        Ok(Self {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("open until commit or drop");
        file.write_all(data).at(&self.tmp)
    }

    /// fsync, close, rename over the destination, fsync the directory. The file is closed
    /// before the rename: Windows cannot always rename a file that is still open. On
    /// failure the destination is left as it was and the temporary file is removed.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("open until commit or drop");
        file.sync_all().at(&self.tmp)?;
        drop(file);
        platform::rename_replacing(&self.tmp, &self.dest).at(&self.dest)?;
        fsync_dir(self.dest.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Close first: Windows only marks an open file for deletion, and the name would
        // linger until the handle is closed.
        drop(self.file.take());
        // After a successful rename the temporary name no longer exists; otherwise this
        // removes the abandoned attempt so no half-written file is left behind.
        let _ = fs::remove_file(&self.tmp);
    }
}
