//! Where shard bytes come from, and where repaired shards go. A reader reads local shard
//! files unless it is given another source (the remote client fetches ranges over HTTP, a
//! volume on object storage fetches ranges of its objects); either way the bytes are
//! verified by the same reader code, so no source is ever trusted. A reader over another
//! source can repair a shard only if it is also given a sink to hand the rebuilt bytes to.

use crate::shardio::Problem;

/// A supplier of raw, unverified shard bytes.
pub trait ShardSource: Send + Sync {
    /// Fill `buf` with bytes `[start, start + buf.len())` of shard `shard` (data first,
    /// then parity) of stripe `stripe`, as far as they exist; return how many bytes are real
    /// and why not all of them were, if so. The caller zero-fills the rest.
    fn read_range(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> (usize, Option<Problem>);
}

/// A destination for whole repaired shards of a reader over a [`ShardSource`].
pub trait ShardSink: Send + Sync {
    /// Store `data`, the complete and verified bytes of shard `shard` (data first, then
    /// parity) of stripe `stripe`, in place of the damaged one. It should replace the
    /// shard atomically: on error the old shard should be left as it was. The message of
    /// an error is reported to the user with the shard's identity.
    fn store(&self, stripe: usize, shard: usize, data: &[u8]) -> std::result::Result<(), String>;
}
