//! Where shard bytes come from, and where repaired shards go. Every reader reads through a
//! [`ShardSource`]: the object's local shard files ([`crate::local::LocalFiles`]), ranges
//! fetched over HTTP by the remote client, ranges of objects in a bucket. Either way the
//! bytes are verified by the same reader code, so no source is ever trusted. A reader
//! repairs a shard only through a [`ShardSink`]: local files replace the shard file
//! atomically; another source needs a sink to hand the rebuilt bytes to.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::shardio::Problem;

/// A supplier of raw, unverified shard bytes.
pub trait ShardSource: Send + Sync {
    /// Fill `buf` with bytes `[start, start + buf.len())` of shard `shard` (data first,
    /// then parity) of stripe `stripe`, as far as they exist; return how many bytes are real
    /// and why not all of them were, if so. The caller zero-fills the rest.
    ///
    /// A shard that cannot be read is `Ok` with a [`Problem`]: the reader rebuilds its
    /// bytes from the other shards. `Err` stops the whole operation and reaches the
    /// reader's caller unchanged; it is for being told to stop (the user interrupted:
    /// [`Error::Interrupted`]), never for a bad shard.
    fn read_range(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(usize, Option<Problem>)>;

    /// Whether the shard holds bytes past `len`, its recorded length (it is oversized).
    /// The default asks for the one byte after the end.
    fn has_more(&self, stripe: usize, shard: usize, len: u64) -> Result<bool> {
        Ok(self.read_range(stripe, shard, len, &mut [0u8; 1])?.0 > 0)
    }
}

/// A destination for repaired shards.
pub trait ShardSink: Send + Sync {
    /// Start replacing shard `shard` (data first, then parity) of stripe `stripe`; `path`
    /// names it in messages. The writer receives the complete, verified bytes of the shard
    /// in order and replaces the shard only when committed: dropped uncommitted, or on
    /// error, it leaves the shard as it was (as far as the sink guarantees).
    fn begin(&self, stripe: usize, shard: usize, path: &Path) -> Result<Box<dyn ShardWriter + '_>>;

    /// Fail early, before anything is read or rebuilt, if a repaired shard `shard` of
    /// `stripe` could not be stored at all (local files: the object directory is gone).
    fn check(&self, stripe: usize, shard: usize) -> Result<()> {
        let _ = (stripe, shard);
        Ok(())
    }

    /// Whether a healthy shard should be recognised by a verification pass before
    /// [`ShardSink::begin`], because beginning costs more than reading the shard once more
    /// (local files: a temporary file and perhaps directories). A sink that gathers the
    /// shard in memory says no: the reader then verifies and assembles the shard in one
    /// pass, fetching each byte once, and drops the writer if nothing needed repair.
    fn verify_first(&self) -> bool {
        false
    }
}

/// The bytes of one shard on their way to a [`ShardSink`].
pub trait ShardWriter {
    /// Append the next bytes of the shard.
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Replace the shard with everything written, atomically as far as the sink can.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Gathers a whole shard in memory and hands it over at once on commit: the writer of
/// sinks that take whole shards (object storage, a Python callable). `store` receives the
/// bytes; a message it returns becomes an [`Error::Store`] naming the shard.
pub struct Gather<F> {
    bytes: Vec<u8>,
    stripe: usize,
    shard: usize,
    path: PathBuf,
    store: F,
}

/// What a whole-shard store can say: it refused the shard (with a message for the user),
/// or the whole operation must stop with this error.
pub enum Refusal {
    Message(String),
    Stop(Error),
}

impl<F: FnOnce(Vec<u8>) -> std::result::Result<(), Refusal>> Gather<F> {
    pub fn new(stripe: usize, shard: usize, path: &Path, store: F) -> Self {
        Self {
            bytes: Vec::new(),
            stripe,
            shard,
            path: path.to_path_buf(),
            store,
        }
    }
}

impl<F: FnOnce(Vec<u8>) -> std::result::Result<(), Refusal>> ShardWriter for Gather<F> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let Gather {
            bytes,
            stripe,
            shard,
            path,
            store,
        } = *self;
        store(bytes).map_err(|refusal| match refusal {
            Refusal::Stop(e) => e,
            Refusal::Message(message) => Error::Store {
                stripe,
                shard,
                path,
                message,
            },
        })
    }
}
