//! The geometry of one committed object as the core sees it: stripes of data and parity
//! shards, their lengths and chunk hashes, and the mapping from file offsets to shards.
//! Python decides names and tiers; the core only checks that the geometry is consistent.

use std::path::{Component, Path, PathBuf};

use crate::codec::ALIGN;
use crate::error::{Error, Result};
use crate::hashing::{chunk_count, Hash};

/// One shard file: its path, its length and chunk hashes.
///
/// The path is relative to the shard's object directory: `dir` when given (the object's
/// directory on another volume), else the object's root. Nothing below that directory is
/// trusted (no link is followed there; see `local.rs`). An absolute path without `dir`
/// names a shard kept elsewhere whose directory is trusted as given; only the file itself
/// is checked.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub path: PathBuf,
    pub len: u64,
    pub hashes: Vec<Hash>,
    pub dir: Option<PathBuf>,
}

impl ShardSpec {
    /// A shard at `path` under the object's root (or absolute), with no directory of its own.
    pub fn new(path: impl Into<PathBuf>, len: u64, hashes: Vec<Hash>) -> Self {
        Self {
            path: path.into(),
            len,
            hashes,
            dir: None,
        }
    }

    /// Check the path: relative paths are plain names (no `..`, `.` or root), and an
    /// absolute one names a file without `..` and has no directory of its own.
    fn check_path(&self) -> Result<()> {
        let plain = |p: &Path| {
            p.components().next().is_some()
                && p.components().all(|c| matches!(c, Component::Normal(_)))
        };
        let ok = if self.path.is_absolute() {
            self.dir.is_none()
                && self.path.file_name().is_some()
                && !self.path.components().any(|c| c == Component::ParentDir)
        } else {
            plain(&self.path)
        };
        if !ok {
            return Err(Error::Layout(format!(
                "shard path {} must be a plain relative path (or absolute without a \
                 directory of its own)",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// `k` data shards (file bytes, unpadded) and `m` parity shards of one Reed-Solomon stripe.
#[derive(Debug, Clone)]
pub struct StripeSpec {
    pub data: Vec<ShardSpec>,
    pub parity: Vec<ShardSpec>,
}

impl StripeSpec {
    pub fn k(&self) -> usize {
        self.data.len()
    }

    pub fn m(&self) -> usize {
        self.parity.len()
    }

    /// Shard `s` of the stripe: data shards first, then parity.
    pub fn shard(&self, s: usize) -> &ShardSpec {
        if s < self.k() {
            &self.data[s]
        } else {
            &self.parity[s - self.k()]
        }
    }

    pub fn shard_count(&self) -> usize {
        self.k() + self.m()
    }

    /// Common length every shard is padded to (in memory) for encoding; parity is stored
    /// at this length.
    pub fn padded_len(&self) -> u64 {
        padded_len(self.data.iter().map(|d| d.len))
    }
}

/// Round the longest of `lens` up to the codec alignment.
pub fn padded_len(lens: impl Iterator<Item = u64>) -> u64 {
    lens.max().unwrap_or(0).next_multiple_of(ALIGN as u64)
}

/// A whole object: its directory, chunk size and stripes in file order.
#[derive(Debug, Clone)]
pub struct ObjectSpec {
    pub root: PathBuf,
    pub chunk_size: u64,
    pub stripes: Vec<StripeSpec>,
    /// (file offset, stripe, data shard) of every data shard, in file order.
    starts: Vec<(u64, usize, usize)>,
    size: u64,
}

/// Check a chunk size: a positive multiple of the codec alignment, at most 1 MiB.
pub fn check_chunk_size(chunk_size: u64) -> Result<()> {
    if chunk_size == 0 || chunk_size % ALIGN as u64 != 0 || chunk_size > 1 << 20 {
        return Err(Error::Layout(format!(
            "chunk size {chunk_size} must be a positive multiple of {ALIGN} and at most 1 MiB"
        )));
    }
    Ok(())
}

impl ObjectSpec {
    /// Validate and index a layout.
    pub fn new(root: &Path, chunk_size: u64, stripes: Vec<StripeSpec>) -> Result<Self> {
        check_chunk_size(chunk_size)?;
        if stripes.is_empty() {
            return Err(Error::Layout("an object needs at least one stripe".into()));
        }
        let mut starts = Vec::new();
        let mut offset = 0u64;
        for (si, stripe) in stripes.iter().enumerate() {
            if stripe.k() == 0 || stripe.m() == 0 {
                return Err(Error::Layout(format!(
                    "stripe {si}: needs data and parity shards"
                )));
            }
            let padded = stripe.padded_len();
            for (s, shard) in stripe.data.iter().chain(&stripe.parity).enumerate() {
                shard.check_path()?;
                let is_parity = s >= stripe.k();
                if !is_parity && shard.len == 0 {
                    return Err(Error::Layout(format!("stripe {si}: empty data shard {s}")));
                }
                if is_parity && shard.len != padded {
                    return Err(Error::Layout(format!(
                        "stripe {si}: parity shard {} is {} bytes, expected {padded}",
                        s - stripe.k(),
                        shard.len
                    )));
                }
                let want = chunk_count(shard.len, chunk_size);
                if shard.hashes.len() as u64 != want {
                    return Err(Error::Layout(format!(
                        "{}: {} chunk hashes, expected {want}",
                        shard.path.display(),
                        shard.hashes.len()
                    )));
                }
            }
            for (i, shard) in stripe.data.iter().enumerate() {
                starts.push((offset, si, i));
                offset += shard.len;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            chunk_size,
            stripes,
            starts,
            size: offset,
        })
    }

    /// Size of the file the object holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data shard holding file offset `offset` (< size): (stripe, shard, offset in shard).
    pub fn locate(&self, offset: u64) -> (usize, usize, u64) {
        let idx = self
            .starts
            .partition_point(|&(start, _, _)| start <= offset)
            - 1;
        let (start, stripe, shard) = self.starts[idx];
        (stripe, shard, offset - start)
    }

    /// Path of shard `s` of stripe `stripe`: under its object directory (its own or the
    /// object's root), or the shard's own path when that is absolute. For messages: shard
    /// files are opened through `local.rs`, never by this path.
    pub fn path(&self, stripe: usize, s: usize) -> PathBuf {
        let shard = self.stripes[stripe].shard(s);
        shard.dir.as_ref().unwrap_or(&self.root).join(&shard.path)
    }

    /// Every chunk hash in layout order (stripes, then data and parity shards, then chunks):
    /// the leaves of the Merkle tree.
    pub fn leaves(&self) -> Vec<Hash> {
        self.stripes
            .iter()
            .flat_map(|st| st.data.iter().chain(&st.parity))
            .flat_map(|sh| sh.hashes.iter().copied())
            .collect()
    }
}
