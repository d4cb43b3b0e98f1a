//! Where shard bytes come from. A reader reads local shard files unless it is given another
//! source (the remote client fetches ranges over HTTP); either way the bytes are verified
//! by the same reader code, so no source is ever trusted.

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
