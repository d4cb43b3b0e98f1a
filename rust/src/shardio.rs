//! Reading byte ranges of open shard files, and making directory entries durable.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::platform;

/// What kept a range from being read in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Short,
    Unreadable,
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
