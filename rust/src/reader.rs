//! The verified reader: reads of any range that verify only the chunks they touch, rebuild
//! damaged chunks from verified survivors, and report which shards were bad; whole-shard
//! verification; and repair of a damaged shard into a verified replacement.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cache::{ChunkCache, Key};
use crate::codec;
use crate::error::{Error, Result};
use crate::hashing::{chunk_count, chunk_hash};
use crate::layout::{ObjectSpec, ShardSpec};
use crate::local::LocalFiles;
use crate::shardio::Problem;
use crate::source::{ShardSink, ShardSource};

/// Bytes verified, hashed or rebuilt per step when walking a whole shard.
const WINDOW: u64 = 1 << 20;

/// Byte budget of the chunks a reader without a shared cache keeps after rebuilding them
/// (for the repair that usually follows a read through damage). Nothing is kept while
/// nothing needs rebuilding.
const REBUILT_BUDGET: usize = 32 << 20;

/// What was wrong with a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The file does not exist.
    Missing,
    /// The file ends before its recorded length.
    Short,
    /// The file is longer than its recorded length (the tail is not ours).
    Oversized,
    /// The file could not be read (I/O error).
    Unreadable,
    /// Chunk bytes do not match the manifest hash.
    Corrupt,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Missing => "missing",
            Damage::Short => "short",
            Damage::Oversized => "oversized",
            Damage::Unreadable => "unreadable",
            Damage::Corrupt => "corrupt",
        }
    }
}

/// A shard found bad during an operation: stripe, shard (data first, then parity), why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadShard {
    pub stripe: usize,
    pub shard: usize,
    pub damage: Damage,
}

/// Result of verifying one whole shard.
#[derive(Debug, Clone, Default)]
pub struct ShardCheck {
    /// Indices of chunks that failed verification (or could not be read).
    pub bad_chunks: Vec<u64>,
    /// The first problem seen, if any.
    pub damage: Option<Damage>,
}

impl ShardCheck {
    pub fn is_ok(&self) -> bool {
        self.damage.is_none()
    }
}

fn note(bad: &mut Vec<BadShard>, b: BadShard) {
    if !bad
        .iter()
        .any(|x| x.stripe == b.stripe && x.shard == b.shard)
    {
        bad.push(b);
    }
}

/// Which chunks of `buf` (bytes of `spec` from chunk `first` on, `avail` of them real)
/// match their hashes. Chunks wholly past the end of a data shard are its in-memory zero
/// padding and always valid.
fn check_chunks(spec: &ShardSpec, chunk: u64, first: u64, buf: &[u8], avail: usize) -> Vec<bool> {
    let count = (buf.len() as u64).div_ceil(chunk);
    (0..count)
        .map(|n| {
            let j = first + n;
            let begin = j * chunk;
            if begin >= spec.len {
                return true;
            }
            let len = chunk.min(spec.len - begin) as usize;
            let local = (n * chunk) as usize;
            local + len <= avail && chunk_hash(&buf[local..local + len]) == spec.hashes[j as usize]
        })
        .collect()
}

fn damage_of(problem: Option<Problem>) -> Damage {
    match problem {
        Some(Problem::Missing) => Damage::Missing,
        Some(Problem::Short) => Damage::Short,
        Some(Problem::Unreadable) => Damage::Unreadable,
        None => Damage::Corrupt,
    }
}

thread_local! {
    // Reused read buffer: a fresh large allocation per request would be returned to the OS
    // after every read (glibc trims big blocks), costing page faults on every request.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Copy the part of `src` (bytes of a shard starting at `src_start`) that overlaps
/// `[want_start, want_start + out.len())` into the matching place of `out`.
fn copy_overlap(src: &[u8], src_start: u64, out: &mut [u8], want_start: u64) {
    let lo = src_start.max(want_start);
    let hi = (src_start + src.len() as u64).min(want_start + out.len() as u64);
    if lo < hi {
        let n = (hi - lo) as usize;
        let from = (lo - src_start) as usize;
        let to = (lo - want_start) as usize;
        out[to..to + n].copy_from_slice(&src[from..from + n]);
    }
}

/// A verified reader over one object. Cheap to share between threads: it holds no open
/// files (a repaired shard is a new inode, so every read opens the current one).
///
/// Shard bytes come from a [`ShardSource`]: the object's local shard files unless another
/// source is given. Either way they are read and verified by the same code. A shard is
/// repaired through a [`ShardSink`]: local files are replaced in place; a reader over
/// another source needs a sink to hand rebuilt shards to.
pub struct Reader {
    spec: ObjectSpec,
    cache: Option<Arc<ChunkCache>>,
    /// Rebuilt chunks, when there is no shared cache to keep them in.
    rebuilt: ChunkCache,
    /// Reed-Solomon decodes run (see [`Reader::decode_count`]).
    decodes: AtomicU64,
    source: Box<dyn ShardSource>,
    /// Where repaired shards go; none: the reader cannot repair.
    sink: Option<Box<dyn ShardSink>>,
}

impl Reader {
    /// A reader over the object's local shard files, which it also repairs in place.
    pub fn new(spec: ObjectSpec) -> Self {
        let files = LocalFiles::new(&spec);
        Self::build(spec, None, Box::new(files.clone()), Some(Box::new(files)))
    }

    /// A reader over local files (see [`Reader::new`]) that keeps verified chunks it had
    /// to read only partly (and rebuilt chunks) in `cache`, so neighbouring reads do not
    /// read and hash them again.
    pub fn with_cache(spec: ObjectSpec, cache: Arc<ChunkCache>) -> Self {
        Self {
            cache: Some(cache),
            ..Self::new(spec)
        }
    }

    /// A reader whose shard bytes come from `source` instead of local files. Reads and
    /// whole-shard verification work exactly as for local objects; repair needs a sink
    /// (see [`Reader::with_sink`]).
    pub fn with_source(
        spec: ObjectSpec,
        cache: Option<Arc<ChunkCache>>,
        source: Box<dyn ShardSource>,
    ) -> Self {
        Self::build(spec, cache, source, None)
    }

    fn build(
        spec: ObjectSpec,
        cache: Option<Arc<ChunkCache>>,
        source: Box<dyn ShardSource>,
        sink: Option<Box<dyn ShardSink>>,
    ) -> Self {
        Self {
            spec,
            cache,
            rebuilt: ChunkCache::new(REBUILT_BUDGET),
            decodes: AtomicU64::new(0),
            source,
            sink,
        }
    }

    /// Hand repaired shards to `sink` (in place of any sink the reader had).
    pub fn with_sink(mut self, sink: Box<dyn ShardSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether `repair_shard` can write a repaired shard: whether there is a sink.
    pub fn can_repair(&self) -> bool {
        self.sink.is_some()
    }

    /// Raw bytes of a shard range from the reader's source, zero-filled past what exists.
    /// An error stops the operation (the source was told to stop).
    fn fetch(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(usize, Option<Problem>)> {
        let (avail, problem) = self.source.read_range(stripe, shard, start, buf)?;
        let avail = avail.min(buf.len());
        buf[avail..].fill(0);
        Ok((avail, problem))
    }

    pub fn spec(&self) -> &ObjectSpec {
        &self.spec
    }

    /// The cache key of a chunk: its manifest hash (its content).
    fn key(&self, stripe: usize, shard: usize, chunk: u64) -> Key {
        self.spec.stripes[stripe].shard(shard).hashes[chunk as usize]
    }

    /// Where rebuilt chunks are kept: the shared cache, or the reader's own store.
    fn kept(&self) -> &ChunkCache {
        self.cache.as_deref().unwrap_or(&self.rebuilt)
    }

    /// A chunk from the shared cache (reads use nothing else: without a shared cache,
    /// every read goes to the shards and reports the damage it finds).
    fn cached(&self, stripe: usize, shard: usize, chunk: u64) -> Option<Arc<[u8]>> {
        self.cache.as_ref()?.get(&self.key(stripe, shard, chunk))
    }

    fn is_cached(&self, stripe: usize, shard: usize, chunk: u64) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.contains(&self.key(stripe, shard, chunk)))
    }

    /// Keep rebuilt (and verified) chunk bytes, with or without a shared cache: a repair
    /// of the shard then takes them instead of decoding again.
    fn keep_rebuilt(&self, stripe: usize, shard: usize, chunk: u64, data: &[u8]) {
        self.kept().insert(self.key(stripe, shard, chunk), data);
    }

    /// A chunk kept after it was rebuilt (or cached), for a repair.
    fn rebuilt_before(&self, stripe: usize, shard: usize, chunk: u64) -> Option<Arc<[u8]>> {
        self.kept().get(&self.key(stripe, shard, chunk))
    }

    /// How many Reed-Solomon decodes this reader has run (for tests: proof that a repair
    /// reused chunks a read had rebuilt).
    #[doc(hidden)]
    pub fn decode_count(&self) -> u64 {
        self.decodes.load(Ordering::Relaxed)
    }

    fn remember(&self, stripe: usize, shard: usize, chunk: u64, data: &[u8]) {
        if let Some(cache) = &self.cache {
            cache.insert(self.key(stripe, shard, chunk), data);
        }
    }

    /// Fill `out` with the file bytes at `offset`, every byte verified (rebuilt from parity
    /// where a chunk fails). Shards found bad are added to `bad`. An empty `out` reads
    /// nothing, wherever it is (at or past the end included); a non-empty one must lie
    /// within the object.
    pub fn read(&self, offset: u64, out: &mut [u8], bad: &mut Vec<BadShard>) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let end = offset.saturating_add(out.len() as u64);
        if end > self.spec.size() {
            return Err(Error::Layout(format!(
                "read {offset}..{end} past the end of a {}-byte object",
                self.spec.size()
            )));
        }
        let mut pos = offset;
        let mut out = out;
        while !out.is_empty() {
            let (stripe, shard, soff) = self.spec.locate(pos);
            let spec = &self.spec.stripes[stripe].data[shard];
            let n = (out.len() as u64).min(spec.len - soff) as usize;
            let (piece, rest) = out.split_at_mut(n);
            self.read_piece(stripe, shard, soff, piece, bad)?;
            pos += n as u64;
            out = rest;
        }
        Ok(())
    }

    /// Verified bytes `[soff, soff + out.len())` of one data shard.
    fn read_piece(
        &self,
        stripe: usize,
        shard: usize,
        soff: u64,
        out: &mut [u8],
        bad: &mut Vec<BadShard>,
    ) -> Result<()> {
        let spec = &self.spec.stripes[stripe].data[shard];
        let chunk = self.spec.chunk_size;
        let end = soff + out.len() as u64;
        let last = (end - 1) / chunk;
        let mut j = soff / chunk;
        while j <= last {
            if let Some(data) = self.cached(stripe, shard, j) {
                copy_overlap(&data, j * chunk, out, soff);
                j += 1;
                continue;
            }
            let mut jb = j + 1;
            while jb <= last && !self.is_cached(stripe, shard, jb) {
                jb += 1;
            }
            let run = (j * chunk, (jb * chunk).min(spec.len));
            let served = if run.0 >= soff && run.1 <= end {
                self.read_run_in_place(stripe, shard, j, run, out, soff)
            } else {
                self.read_run_partial(stripe, shard, (j, jb), run, out, soff)
            };
            let served = match served {
                Ok(served) => served,
                Err(e) => {
                    // Bytes read in place may be unverified: leave none behind.
                    out.fill(0);
                    return Err(e);
                }
            };
            if let Err(damage) = served {
                let (a, b) = run;
                note(
                    bad,
                    BadShard {
                        stripe,
                        shard,
                        damage,
                    },
                );
                let data = match self.recover(stripe, j, jb, bad) {
                    Ok(data) => data,
                    Err(e) => {
                        // Bytes read in place failed verification: leave none behind.
                        out.fill(0);
                        return Err(e);
                    }
                };
                let rebuilt = &data[shard][..(b - a) as usize];
                copy_overlap(rebuilt, a, out, soff);
                // Rebuilt chunks were expensive: keep them all until the shard is repaired.
                for c in j..jb {
                    let (ca, cb) = (c * chunk, ((c + 1) * chunk).min(spec.len));
                    let bytes = &rebuilt[(ca - a) as usize..(cb - a) as usize];
                    self.keep_rebuilt(stripe, shard, c, bytes);
                }
            }
            j = jb;
        }
        Ok(())
    }

    /// Whole chunks starting at chunk `j` (bytes `[a, b)`) that the caller wants entirely:
    /// read and verify them straight in the caller's buffer, with no copy.
    fn read_run_in_place(
        &self,
        stripe: usize,
        shard: usize,
        j: u64,
        (a, b): (u64, u64),
        out: &mut [u8],
        soff: u64,
    ) -> Result<std::result::Result<(), Damage>> {
        let spec = &self.spec.stripes[stripe].data[shard];
        let dst = &mut out[(a - soff) as usize..(b - soff) as usize];
        let (avail, problem) = self.fetch(stripe, shard, a, dst)?;
        let valid = check_chunks(spec, self.spec.chunk_size, j, dst, avail);
        Ok(if valid.iter().all(|&v| v) {
            Ok(())
        } else {
            Err(damage_of(problem))
        })
    }

    /// Chunks `[j, jb)` (bytes `[a, b)`) of which the caller wants only a part: read them
    /// into a scratch buffer, verify, copy the wanted part, and cache the edge chunks.
    fn read_run_partial(
        &self,
        stripe: usize,
        shard: usize,
        (j, jb): (u64, u64),
        (a, b): (u64, u64),
        out: &mut [u8],
        soff: u64,
    ) -> Result<std::result::Result<(), Damage>> {
        let spec = &self.spec.stripes[stripe].data[shard];
        let chunk = self.spec.chunk_size;
        let end = soff + out.len() as u64;
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.resize((b - a) as usize, 0);
            let (avail, problem) = self.fetch(stripe, shard, a, &mut buf)?;
            let valid = check_chunks(spec, chunk, j, &buf, avail);
            if !valid.iter().all(|&v| v) {
                return Ok(Err(damage_of(problem)));
            }
            copy_overlap(&buf, a, out, soff);
            // Keep chunks this read needed only part of: the next read wants the rest.
            for edge in [j, jb - 1] {
                let (ca, cb) = (edge * chunk, ((edge + 1) * chunk).min(spec.len));
                if ca < soff || cb > end {
                    let bytes = &buf[(ca - a) as usize..(cb - a) as usize];
                    self.remember(stripe, shard, edge, bytes);
                }
            }
            Ok(Ok(()))
        })
    }

    /// Rebuild the `k` data slices of stripe range `[c0, c1)` (in chunks) from verified
    /// shards: data shards first, parity only as far as needed. Rebuilt bytes are checked
    /// against the manifest before they are returned. Bad shards go into `bad`.
    fn recover(
        &self,
        stripe: usize,
        c0: u64,
        c1: u64,
        bad: &mut Vec<BadShard>,
    ) -> Result<Vec<Vec<u8>>> {
        let st = &self.spec.stripes[stripe];
        let chunk = self.spec.chunk_size;
        let k = st.k();
        let padded = st.padded_len();
        let a = c0 * chunk;
        let b = (c1 * chunk).min(padded);
        let nchunks = (c1 - c0) as usize;
        let mut bufs: Vec<Option<Vec<u8>>> = vec![None; st.shard_count()];
        let mut valid: Vec<Vec<bool>> = vec![vec![false; nchunks]; st.shard_count()];
        let mut good_per_chunk = vec![0usize; nchunks];
        for s in 0..st.shard_count() {
            if s >= k && good_per_chunk.iter().all(|&g| g >= k) {
                break;
            }
            let spec = st.shard(s);
            let mut buf = vec![0u8; (b - a) as usize];
            // A range wholly in the zero padding of a short data shard needs no read.
            let (avail, problem) = if a < spec.len {
                let real = (b.min(spec.len) - a) as usize;
                self.fetch(stripe, s, a, &mut buf[..real])?
            } else {
                (0, None)
            };
            let v = check_chunks(spec, chunk, c0, &buf, avail);
            if v.iter().any(|&ok| !ok) {
                note(
                    bad,
                    BadShard {
                        stripe,
                        shard: s,
                        damage: damage_of(problem),
                    },
                );
            }
            for (j, &ok) in v.iter().enumerate() {
                good_per_chunk[j] += usize::from(ok);
            }
            valid[s] = v;
            bufs[s] = Some(buf);
        }
        let mut out: Vec<Vec<u8>> = vec![vec![0u8; (b - a) as usize]; k];
        // Decode runs of chunks that share the same set of valid shards in one call.
        let mut j = 0;
        while j < nchunks {
            let pattern: Vec<bool> = (0..st.shard_count()).map(|s| valid[s][j]).collect();
            let mut end = j + 1;
            while end < nchunks && (0..st.shard_count()).all(|s| valid[s][end] == pattern[s]) {
                end += 1;
            }
            let lo = j * chunk as usize;
            let hi = (end * chunk as usize).min((b - a) as usize);
            let good = pattern.iter().filter(|&&p| p).count();
            if good < k {
                return Err(Error::Unrecoverable {
                    stripe,
                    start: a + lo as u64,
                    end: a + hi as u64,
                    good,
                    needed: k,
                });
            }
            let slices: Vec<Option<&[u8]>> = (0..st.shard_count())
                .map(|s| {
                    pattern[s]
                        .then(|| bufs[s].as_deref().map(|buf| &buf[lo..hi]))
                        .flatten()
                })
                .collect();
            if pattern[..k].iter().any(|&p| !p) {
                self.decodes.fetch_add(1, Ordering::Relaxed);
            }
            let restored = codec::reconstruct(k, &slices)?;
            for (i, data) in restored.into_iter().enumerate() {
                if !pattern[i] {
                    self.check_rebuilt(stripe, i, c0 + j as u64, &data)?;
                }
                out[i][lo..hi].copy_from_slice(&data);
            }
            j = end;
        }
        Ok(out)
    }

    /// Verify rebuilt bytes of shard `s` starting at chunk `first`.
    fn check_rebuilt(&self, stripe: usize, s: usize, first: u64, data: &[u8]) -> Result<()> {
        let spec = self.spec.stripes[stripe].shard(s);
        let chunk = self.spec.chunk_size;
        let valid = check_chunks(spec, chunk, first, data, data.len());
        if let Some(n) = valid.iter().position(|&v| !v) {
            let start = (first + n as u64) * chunk;
            return Err(Error::RebuildMismatch {
                path: self.spec.path(stripe, s),
                start,
                end: (start + chunk).min(spec.len),
            });
        }
        Ok(())
    }

    /// Verify every chunk of one shard (data or parity) and its length, reading through
    /// the reader's source window by window. Fails only if the source says to stop.
    pub fn verify_shard(&self, stripe: usize, s: usize) -> Result<ShardCheck> {
        let spec = self.spec.stripes[stripe].shard(s);
        let chunk = self.spec.chunk_size;
        let count = chunk_count(spec.len, chunk);
        let mut check = ShardCheck::default();
        let window = (WINDOW / chunk).max(1) * chunk;
        let mut buf = vec![0u8; window.min(spec.len) as usize];
        let mut a = 0;
        while a < spec.len {
            let b = (a + window).min(spec.len);
            let buf = &mut buf[..(b - a) as usize];
            let (avail, problem) = self.fetch(stripe, s, a, buf)?;
            let first = a / chunk;
            for (n, ok) in check_chunks(spec, chunk, first, buf, avail)
                .into_iter()
                .enumerate()
            {
                if !ok {
                    check.bad_chunks.push(first + n as u64);
                    check.damage.get_or_insert(damage_of(problem));
                }
            }
            if avail < buf.len() && matches!(problem, Some(Problem::Missing | Problem::Short)) {
                // Nothing exists past this window: every later chunk is bad too, and
                // asking for it again (perhaps over the network) would tell nothing new.
                check.bad_chunks.extend(b.div_ceil(chunk)..count);
                break;
            }
            a = b;
        }
        if check.damage.is_none() && self.source.has_more(stripe, s, spec.len)? {
            check.damage = Some(Damage::Oversized);
        }
        Ok(check)
    }

    /// Rebuild shard `s` of `stripe` if it is damaged: good chunks are kept, bad ones are
    /// rebuilt from verified survivors and checked against the manifest, and the whole
    /// shard goes to the reader's sink (local files: a synced temporary file renamed over
    /// the shard). Without a sink a damaged shard is an error.
    ///
    /// Returns the number of chunks rebuilt (0 and nothing written when the shard was
    /// healthy). On failure nothing is written: the shard is left exactly as it was.
    pub fn repair_shard(&self, stripe: usize, s: usize, bad: &mut Vec<BadShard>) -> Result<u64> {
        let spec = self.spec.stripes[stripe].shard(s);
        let path = self.spec.path(stripe, s);
        let Some(sink) = &self.sink else {
            if self.verify_shard(stripe, s)?.is_ok() {
                return Ok(0);
            }
            return Err(Error::NoSink {
                stripe,
                shard: s,
                path,
            });
        };
        sink.check(stripe, s)?;
        if sink.verify_first() && self.verify_shard(stripe, s)?.is_ok() {
            return Ok(0);
        }
        let chunk = self.spec.chunk_size;
        let window = (WINDOW / chunk).max(1) * chunk;
        let mut buf = vec![0u8; window.min(spec.len) as usize];
        let mut out = None;
        let mut rebuilt = 0;
        let mut a = 0;
        while a < spec.len {
            let b = (a + window).min(spec.len);
            let buf = &mut buf[..(b - a) as usize];
            rebuilt += self.mend_window(stripe, s, a, buf, bad)?;
            // Begun once the first window is rebuilt: a shard that cannot be rebuilt at
            // all is refused before anything (a temporary file, a directory) is created.
            let writer = match &mut out {
                Some(writer) => writer,
                None => out.insert(sink.begin(stripe, s, &path)?),
            };
            writer.write(buf)?;
            a = b;
        }
        // Every kind of damage but a tail past the end shows as bad chunks. (Dropping the
        // writer uncommitted leaves the shard as it was.)
        if rebuilt == 0 && !self.source.has_more(stripe, s, spec.len)? {
            return Ok(0);
        }
        if let Some(writer) = out {
            writer.commit()?;
        }
        // An oversized shard has no bad chunk but still needed rewriting; count it as one.
        Ok(rebuilt.max(1))
    }

    /// Fill `buf` with the verified bytes of shard `s` from offset `a` (a chunk boundary):
    /// read them, and rebuild the chunks that fail verification. Returns how many chunks
    /// were rebuilt.
    fn mend_window(
        &self,
        stripe: usize,
        s: usize,
        a: u64,
        buf: &mut [u8],
        bad: &mut Vec<BadShard>,
    ) -> Result<u64> {
        let spec = self.spec.stripes[stripe].shard(s);
        let chunk = self.spec.chunk_size;
        let c0 = a / chunk;
        let (avail, _) = self.fetch(stripe, s, a, buf)?;
        let mut valid = check_chunks(spec, chunk, c0, buf, avail);
        let mut rebuilt = 0;
        // Bad chunks a read has already rebuilt (and verified) are taken as they are:
        // decoding them again would give the same bytes.
        for (n, ok) in valid.iter_mut().enumerate() {
            let j = c0 + n as u64;
            if *ok || j * chunk >= spec.len {
                continue;
            }
            if let Some(bytes) = self.rebuilt_before(stripe, s, j) {
                let lo = n * chunk as usize;
                let len = (chunk.min(spec.len - j * chunk)) as usize;
                // Held only after verification; checked again as it is about to be written.
                if bytes.len() == len && chunk_hash(&bytes) == spec.hashes[j as usize] {
                    buf[lo..lo + len].copy_from_slice(&bytes);
                    *ok = true;
                    rebuilt += 1;
                }
            }
        }
        // Rebuild only this shard's runs of bad chunks, so that a position beyond parity
        // elsewhere in the window does not block repairing its own damage.
        let mut r0 = 0;
        while r0 < valid.len() {
            if valid[r0] {
                r0 += 1;
                continue;
            }
            let r1 = (r0..valid.len()).find(|&r| valid[r]).unwrap_or(valid.len());
            let piece = self.rebuild_run(stripe, s, c0 + r0 as u64, c0 + r1 as u64, bad)?;
            let lo = r0 * chunk as usize;
            buf[lo..lo + piece.len()].copy_from_slice(&piece);
            rebuilt += (r1 - r0) as u64;
            r0 = r1;
        }
        Ok(rebuilt)
    }

    /// Chunks `[j0, j1)` of shard `s` rebuilt from verified survivors (a parity shard is
    /// re-encoded from the rebuilt data) and checked against the manifest.
    fn rebuild_run(
        &self,
        stripe: usize,
        s: usize,
        j0: u64,
        j1: u64,
        bad: &mut Vec<BadShard>,
    ) -> Result<Vec<u8>> {
        let st = &self.spec.stripes[stripe];
        let k = st.k();
        let chunk = self.spec.chunk_size;
        let len = ((j1 * chunk).min(st.shard(s).len) - j0 * chunk) as usize;
        let mut data = self.recover(stripe, j0, j1, bad)?;
        let mut bytes = if s < k {
            data.swap_remove(s)
        } else {
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let mut parity = vec![Vec::new(); st.m()];
            codec::encode(&slices, &mut parity)?;
            parity.swap_remove(s - k)
        };
        bytes.truncate(len);
        self.check_rebuilt(stripe, s, j0, &bytes)?;
        Ok(bytes)
    }
}
