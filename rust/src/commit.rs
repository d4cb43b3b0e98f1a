//! The commit pipeline: read the source once in stripe order, hash and encode it, and write
//! and sync data and parity shards, with disk writes overlapping hashing and encoding.
//!
//! Threads (all scoped to one call):
//! - the *encoder* (the calling thread) reads a window of every data shard of a stripe into
//!   pooled buffers, hashes the data chunks, encodes the parity window and hashes it;
//! - the *writer* writes each window to the shard files and starts their writeback
//!   (`sync_file_range` on Linux), so the disk works while the encoder computes;
//! - the *syncer* fsyncs the files of each finished stripe;
//! - the *content hasher* hashes the whole file sequentially for the object id.
//!
//! The source is one file, or a list of *member* files whose concatenation is the object
//! (a pack, FORMAT.md §18). Members are opened lazily (only those being read are open: at
//! most a couple per data shard of a stripe), each without following a link and refused
//! unless it is a regular file of the length given; each is checked again, by length,
//! modification time and identity, once it has been read. The content hasher reads the
//! members in order and also returns each member's own hash; the encoder reads them
//! through its own handles at the offsets the stripes need, so reading and hashing of the
//! next members overlap the encoding of the current ones exactly as for a single file.
//!
//! Shards may be spread over several roots (volumes). A *durable* root gets the full
//! treatment (writeback, fsync of every shard and of the directories created); a
//! non-durable one holds temporary files that will be uploaded elsewhere and is never
//! synced.
//!
//! Memory is a fixed pool of window buffers, independent of the file size. The source is
//! read with positional reads (`pread`; `ReadFile` at an offset on Windows) rather than
//! mmapped: mapped pages count against the process's RSS however they are released, and a
//! source truncated by another process during the commit would kill an mmap reader with
//! SIGBUS instead of giving an error.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::codec;
use crate::error::{catch_panic, joined, Error, IoContext, Result};
use crate::hashing::{chunk_hashes, Hash};
use crate::layout::{check_chunk_size, padded_len};
use crate::platform::{self, FileIdentity, FileStamp};
use crate::shardio::fsync_dir;

/// Bytes of every shard handled per pipeline step.
const WINDOW: u64 = 1 << 20;
/// Window buffers in flight (one being filled, the rest queued or being written).
const POOL: usize = 3;

/// One data shard to write: the root it goes under (an index into the commit's roots),
/// its path relative to that root and its length.
#[derive(Debug, Clone)]
pub struct PlanShard {
    pub root: usize,
    pub path: PathBuf,
    pub len: u64,
}

/// One parity shard to write: its root (an index into the commit's roots) and its path
/// relative to that root. Its length is the stripe's padded length.
#[derive(Debug, Clone)]
pub struct PlanParity {
    pub root: usize,
    pub path: PathBuf,
}

/// One stripe to write: data shards in file order and its parity shards.
#[derive(Debug, Clone)]
pub struct PlanStripe {
    pub data: Vec<PlanShard>,
    pub parity: Vec<PlanParity>,
}

impl PlanStripe {
    /// (root index, relative path) of every shard: data first, then parity.
    fn targets(&self) -> impl Iterator<Item = (usize, &Path)> {
        self.data
            .iter()
            .map(|d| (d.root, d.path.as_path()))
            .chain(self.parity.iter().map(|p| (p.root, p.path.as_path())))
    }
}

/// A directory shards are written under, and whether its files must be made durable
/// (fsynced) before the commit returns.
pub type CommitRoot = (PathBuf, bool);

/// Shared between the pipeline and whoever watches it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Source bytes written to shard files so far.
    pub done: AtomicU64,
    /// Set to ask the pipeline to stop; it then returns `Error::Cancelled`.
    pub cancel: AtomicBool,
}

/// What a commit produced: the BLAKE3 hash of the whole object, per stripe and shard
/// (data first, then parity) the chunk hashes, and the BLAKE3 hash of each member file in
/// order (for a single-file source, just the content hash).
#[derive(Debug)]
pub struct CommitOutput {
    pub content_hash: Hash,
    pub hashes: Vec<Vec<Vec<Hash>>>,
    pub member_hashes: Vec<Hash>,
}

/// A member file of a pack: its path and the length it must have.
pub type Member = (PathBuf, u64);

struct Job {
    stripe: usize,
    /// Bytes of each data shard that are real file bytes in this window.
    real: Vec<usize>,
    data: Vec<Vec<u8>>,
    parity: Vec<Vec<u8>>,
    first: bool,
    last: bool,
}

/// Write the shards of `source` under `root` following `plan`, every shard durable. The
/// plan's root indices must all be 0.
pub fn commit(
    source: &Path,
    root: &Path,
    chunk_size: u64,
    plan: &[PlanStripe],
    progress: &Progress,
) -> Result<CommitOutput> {
    commit_to_roots(
        source,
        &[(root.to_path_buf(), true)],
        chunk_size,
        plan,
        progress,
    )
}

/// Write the shards of `source` following `plan`, each under the root its plan entry
/// names. Shards under a durable root are synced (with the directories created for them)
/// before this returns; shards under a non-durable root are only written.
pub fn commit_to_roots(
    source: &Path,
    roots: &[CommitRoot],
    chunk_size: u64,
    plan: &[PlanStripe],
    progress: &Progress,
) -> Result<CommitOutput> {
    let total = check_plan(roots, chunk_size, plan)?;
    let file = File::open(source).at(source)?;
    let before = FileStamp::of(&file).at(source)?;
    if before.len != total {
        return Err(Error::SourceChanged {
            path: source.to_path_buf(),
        });
    }
    let bytes = FileBytes {
        file: &file,
        source,
        before,
    };
    run(roots, chunk_size, plan, progress, bytes, || {
        hash_whole_file(&file, source, progress).map(|h| (h, vec![h]))
    })
}

/// Write the shards of the concatenation of `members` (each a path and the length it must
/// have; zero-length members are allowed) following `plan`, as [`commit_to_roots`] does
/// for one file, and also return each member's hash.
///
/// A member that is a symbolic link (in its last component), that is not a regular file
/// (a FIFO is refused without blocking), that is missing, whose length is not the one
/// given, or that changes (length, modification time or identity) before it has been read
/// completely fails the commit with [`Error::SourceChanged`] naming that member. Then, as
/// for any failed commit, the shards of stripes already finished stay written (and
/// synced, under a durable root), those of the stripe being written are partial and were
/// never synced, no directory was synced, and the caller removes them all (it commits into
/// a staging directory).
pub fn commit_members(
    members: &[Member],
    roots: &[CommitRoot],
    chunk_size: u64,
    plan: &[PlanStripe],
    progress: &Progress,
) -> Result<CommitOutput> {
    let total = check_plan(roots, chunk_size, plan)?;
    let set = MemberSet::new(members);
    let given = set.starts[members.len()];
    if given != total {
        return Err(Error::Layout(format!(
            "the members add up to {given} bytes but the plan holds {total}"
        )));
    }
    let bytes = MemberReader {
        set: &set,
        open: HashMap::new(),
    };
    run(roots, chunk_size, plan, progress, bytes, || {
        let hashed = hash_members(&set, progress);
        if hashed.is_err() {
            // No use encoding the rest: stop the encoder too.
            progress.cancel.store(true, Ordering::Relaxed);
        }
        hashed
    })
}

/// Check the commit's arguments; returns the source length the plan holds.
fn check_plan(roots: &[CommitRoot], chunk_size: u64, plan: &[PlanStripe]) -> Result<u64> {
    check_chunk_size(chunk_size)?;
    if roots.is_empty() {
        return Err(Error::Layout("a commit needs at least one root".into()));
    }
    for (si, stripe) in plan.iter().enumerate() {
        for (s, (root, rel)) in stripe.targets().enumerate() {
            if root >= roots.len() {
                return Err(Error::Layout(format!(
                    "stripe {si} shard {s} ({}): root index {root} out of range ({} roots)",
                    rel.display(),
                    roots.len()
                )));
            }
            if !is_plain_relative(rel) {
                return Err(Error::Layout(format!(
                    "shard path {} must be relative and stay inside its root directory",
                    rel.display()
                )));
            }
        }
    }
    Ok(plan.iter().flat_map(|s| &s.data).map(|d| d.len).sum())
}

/// The source bytes as the encoder reads them: ranges at any offset.
trait SourceBytes {
    /// Fill `buf` with the source bytes at `offset`.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Once every byte has been read: check the source did not change meanwhile.
    fn finish(self) -> Result<()>;
}

/// A single source file, read through the handle opened at the start.
struct FileBytes<'a> {
    file: &'a File,
    source: &'a Path,
    before: FileStamp,
}

impl SourceBytes for FileBytes<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        platform::read_exact_at(self.file, buf, offset)
            .map_err(|e| source_read_error(e, self.source))
    }

    fn finish(self) -> Result<()> {
        // Length and modification time (to the nanosecond on Linux and macOS) as they
        // were when the commit opened the file.
        if FileStamp::of(self.file).at(self.source)? != self.before {
            return Err(Error::SourceChanged {
                path: self.source.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// The member files of a pack: where each starts in the object, and the identity each
/// had when first opened (by the encoder or the content hasher, whichever came first).
struct MemberSet<'a> {
    members: &'a [Member],
    /// Offset of each member in the object, then the object's length.
    starts: Vec<u64>,
    seen: Vec<OnceLock<FileIdentity>>,
}

impl<'a> MemberSet<'a> {
    fn new(members: &'a [Member]) -> Self {
        let mut starts = Vec::with_capacity(members.len() + 1);
        let mut at = 0u64;
        starts.push(at);
        for (_, len) in members {
            at = at.saturating_add(*len);
            starts.push(at);
        }
        Self {
            members,
            starts,
            seen: members.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    fn changed(&self, j: usize) -> Error {
        Error::SourceChanged {
            path: self.members[j].0.clone(),
        }
    }

    /// Open member `j`: a regular file reached without following a link, of the length
    /// given, and the same file any earlier open of it found.
    fn open(&self, j: usize) -> Result<File> {
        let (path, len) = &self.members[j];
        let (file, md) = match platform::open_regular(path) {
            Ok(Some(opened)) => opened,
            // A link, a FIFO, a directory...: not the file the caller listed.
            Ok(None) => return Err(self.changed(j)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.changed(j)),
            Err(e) => return Err(e).at(path),
        };
        let id = FileIdentity::from_metadata(&md);
        if id.stamp.len != *len || *self.seen[j].get_or_init(|| id) != id {
            return Err(self.changed(j));
        }
        Ok(file)
    }

    /// Once member `j` has been read through `file`: it is still as it was first opened.
    fn check(&self, j: usize, file: &File) -> Result<()> {
        let id = FileIdentity::of(file).at(&self.members[j].0)?;
        if self.seen[j].get() != Some(&id) {
            return Err(self.changed(j));
        }
        Ok(())
    }
}

/// The encoder's view of the members: each opened when its first byte is needed and
/// checked and closed once its last one has been read. Every byte of the object is read
/// exactly once (in the one window of the one data shard holding it), so a member stays
/// open only while a read of its range is under way: one per data shard at most, plus
/// those straddling two shards of a stripe.
struct MemberReader<'a> {
    set: &'a MemberSet<'a>,
    /// Open members: their handle and how many of their bytes are still to be read.
    open: HashMap<usize, (File, u64)>,
}

impl SourceBytes for MemberReader<'_> {
    fn read_exact_at(&mut self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
        let n = self.set.members.len();
        let starts = &self.set.starts;
        while !buf.is_empty() {
            if offset >= starts[n] {
                return Err(Error::Layout(format!(
                    "read at {offset} past the end of the members ({} bytes)",
                    starts[n]
                )));
            }
            // The last member starting at or before `offset`: the one holding it (members
            // of length zero before it start there too).
            let j = starts[..n].partition_point(|&s| s <= offset) - 1;
            let take = (starts[j + 1] - offset).min(buf.len() as u64) as usize;
            let (file, left) = match self.open.entry(j) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((self.set.open(j)?, self.set.members[j].1))
                }
            };
            let (here, rest) = buf.split_at_mut(take);
            platform::read_exact_at(file, here, offset - starts[j])
                .map_err(|e| source_read_error(e, &self.set.members[j].0))?;
            *left -= take as u64;
            if *left == 0 {
                let (file, _) = self.open.remove(&j).expect("the member is open");
                self.set.check(j, &file)?;
            }
            buf = rest;
            offset += take as u64;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        // Every member was checked as its last byte was read; none can be left open.
        for (j, (file, _)) in &self.open {
            self.set.check(*j, file)?;
        }
        Ok(())
    }
}

/// The pipeline itself (see the module documentation), once the source is open.
fn run<B, H>(
    roots: &[CommitRoot],
    chunk_size: u64,
    plan: &[PlanStripe],
    progress: &Progress,
    mut bytes: B,
    hash_content: H,
) -> Result<CommitOutput>
where
    B: SourceBytes,
    H: FnOnce() -> Result<(Hash, Vec<Hash>)> + Send,
{
    let window = (WINDOW / chunk_size).max(1) * chunk_size;
    let max_k = plan.iter().map(|s| s.data.len()).max().unwrap_or(0);
    let max_m = plan.iter().map(|s| s.parity.len()).max().unwrap_or(0);
    if plan.is_empty() || max_k == 0 || max_m == 0 {
        return Err(Error::Layout(
            "a commit plan needs data and parity shards".into(),
        ));
    }

    let (job_tx, job_rx) = sync_channel::<Job>(POOL);
    let (free_tx, free_rx) = sync_channel::<Job>(POOL);
    for _ in 0..POOL {
        free_tx
            .send(Job {
                stripe: 0,
                real: Vec::new(),
                data: vec![Vec::with_capacity(window as usize); max_k],
                parity: vec![Vec::with_capacity(window as usize); max_m],
                first: false,
                last: false,
            })
            .expect("pool channel has room");
    }
    let (sync_tx, sync_rx) = sync_channel::<Vec<(PathBuf, File)>>(plan.len());

    std::thread::scope(|scope| {
        let content = scope.spawn(hash_content);
        let syncer = scope.spawn(move || sync_stripes(sync_rx));
        let writer = scope.spawn(|| write_jobs(roots, plan, job_rx, free_tx, sync_tx, progress));
        let encoded = encode_stripes(
            &mut bytes, plan, chunk_size, window, job_tx, free_rx, progress,
        );
        if encoded.is_err() {
            // Stop the content hasher early; its result is no longer needed.
            progress.cancel.store(true, Ordering::Relaxed);
        }
        // Join everything before judging: the first real error wins over the knock-on
        // "channel closed" failures it causes in the other threads.
        let written = joined("the commit's writer thread", writer);
        let synced = joined("the commit's syncer thread", syncer);
        let content_hash = joined("the commit's content hasher thread", content);
        let (hashes, (content_hash, member_hashes)) = match (encoded, written, synced, content_hash)
        {
            (Ok(h), Ok(()), Ok(()), Ok(c)) => (h, c),
            (e1, e2, e3, e4) => {
                // A failing thread makes the others fail with `Cancelled` (closed
                // channels); report the failure that started it.
                let errors = [e1.err(), e2.err(), e3.err(), e4.err()];
                let mut errors = errors.into_iter().flatten();
                let first = errors.next().unwrap_or(Error::Cancelled);
                if matches!(first, Error::Cancelled) {
                    return Err(errors
                        .find(|e| !matches!(e, Error::Cancelled))
                        .unwrap_or(first));
                }
                return Err(first);
            }
        };
        bytes.finish()?;
        for (r, (root, durable)) in roots.iter().enumerate() {
            if *durable {
                fsync_tree(root, r, plan)?;
            }
        }
        Ok(CommitOutput {
            content_hash,
            hashes,
            member_hashes,
        })
    })
}

/// Run `work` on a worker thread and call `report(progress.done)` every `every` while it
/// runs; return its result as soon as it finishes (no polling: the wait ends when the
/// worker does). `report` returning false asks the work to stop (sets `progress.cancel`);
/// the work then returns `Error::Cancelled` and this waits for it. A panic of the worker is
/// an [`Error::Panicked`].
pub fn run_watched<T: Send>(
    progress: &Progress,
    every: Duration,
    work: impl FnOnce() -> Result<T> + Send,
    mut report: impl FnMut(u64) -> bool,
) -> Result<T> {
    let (finished, wait) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            // Dropped when the work ends, normally or by a panic: that wakes the wait.
            let _finished = finished;
            catch_panic("the commit worker thread", work)
        });
        let mut next = Instant::now() + every;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            match wait.recv_timeout(left) {
                Err(RecvTimeoutError::Timeout) => {
                    next = Instant::now() + every;
                    if !report(progress.done.load(Ordering::Relaxed)) {
                        progress.cancel.store(true, Ordering::Relaxed);
                    }
                }
                // Nothing is ever sent: the channel closes when the worker is done.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        joined("the commit worker thread", worker)
    })
}

fn encode_stripes(
    bytes: &mut impl SourceBytes,
    plan: &[PlanStripe],
    chunk_size: u64,
    window: u64,
    job_tx: SyncSender<Job>,
    free_rx: Receiver<Job>,
    progress: &Progress,
) -> Result<Vec<Vec<Vec<Hash>>>> {
    let mut all = Vec::with_capacity(plan.len());
    let mut offset = 0u64;
    for (si, stripe) in plan.iter().enumerate() {
        let k = stripe.data.len();
        let m = stripe.parity.len();
        let padded = padded_len(stripe.data.iter().map(|d| d.len));
        let mut hashes: Vec<Vec<Hash>> = vec![Vec::new(); k + m];
        let mut w0 = 0;
        while w0 < padded {
            if progress.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let wlen = window.min(padded - w0) as usize;
            // A closed pool means the writer stopped on an error; it reports that error.
            let Ok(mut job) = free_rx.recv() else {
                return Err(Error::Cancelled);
            };
            job.stripe = si;
            job.first = w0 == 0;
            job.last = w0 + wlen as u64 >= padded;
            job.real.clear();
            let mut shard_off = offset;
            for (i, shard) in stripe.data.iter().enumerate() {
                let real = shard.len.saturating_sub(w0).min(wlen as u64) as usize;
                let buf = &mut job.data[i];
                buf.resize(wlen, 0);
                if real > 0 {
                    bytes.read_exact_at(&mut buf[..real], shard_off + w0)?;
                }
                buf[real..].fill(0);
                hashes[i].extend(chunk_hashes(&buf[..real], chunk_size as usize));
                job.real.push(real);
                shard_off += shard.len;
            }
            let slices: Vec<&[u8]> = job.data[..k].iter().map(Vec::as_slice).collect();
            codec::encode(&slices, &mut job.parity[..m])?;
            for (j, p) in job.parity[..m].iter().enumerate() {
                hashes[k + j].extend(chunk_hashes(p, chunk_size as usize));
            }
            if job_tx.send(job).is_err() {
                return Err(Error::Cancelled);
            }
            w0 += wlen as u64;
        }
        offset += stripe.data.iter().map(|d| d.len).sum::<u64>();
        all.push(hashes);
    }
    Ok(all)
}

/// A read of the source that ends early means the file shrank under the commit.
fn source_read_error(e: io::Error, source: &Path) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::SourceChanged {
            path: source.to_path_buf(),
        }
    } else {
        Error::Io {
            path: source.to_path_buf(),
            source: e,
        }
    }
}

/// An open shard file of the stripe being written.
struct OpenShard {
    path: PathBuf,
    file: File,
    durable: bool,
}

fn write_jobs(
    roots: &[CommitRoot],
    plan: &[PlanStripe],
    job_rx: Receiver<Job>,
    free_tx: SyncSender<Job>,
    sync_tx: SyncSender<Vec<(PathBuf, File)>>,
    progress: &Progress,
) -> Result<()> {
    let mut files: Vec<OpenShard> = Vec::new();
    let mut pos = 0u64;
    for job in job_rx {
        let stripe = &plan[job.stripe];
        if job.first {
            files.clear();
            pos = 0;
            for (r, rel) in stripe.targets() {
                let (root, durable) = &roots[r];
                let path = root.join(rel);
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).at(dir)?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .at(&path)?;
                files.push(OpenShard {
                    path,
                    file,
                    durable: *durable,
                });
            }
        }
        let k = stripe.data.len();
        let mut written = 0u64;
        for (i, shard) in files.iter_mut().enumerate() {
            let bytes = if i < k {
                &job.data[i][..job.real[i]]
            } else {
                job.parity[i - k].as_slice()
            };
            if bytes.is_empty() {
                continue;
            }
            shard.file.write_all(bytes).at(&shard.path)?;
            if shard.durable {
                platform::start_writeback(&shard.file, pos, bytes.len() as u64);
            }
            if i < k {
                written += bytes.len() as u64;
            }
        }
        pos += job.parity[0].len() as u64;
        progress.done.fetch_add(written, Ordering::Relaxed);
        let last = job.last;
        // The encoder may already be gone (it failed); then nobody needs the buffers back.
        let _ = free_tx.send(job);
        if last {
            // Only durable shards are synced; the others are closed here, unsynced.
            let durable = std::mem::take(&mut files)
                .into_iter()
                .filter(|f| f.durable)
                .map(|f| (f.path, f.file))
                .collect();
            if sync_tx.send(durable).is_err() {
                return Err(Error::Cancelled);
            }
        }
    }
    Ok(())
}

fn sync_stripes(rx: Receiver<Vec<(PathBuf, File)>>) -> Result<()> {
    for files in rx {
        for (path, f) in files {
            f.sync_all().at(&path)?;
        }
    }
    Ok(())
}

/// fsync every directory the plan created under root `index` (at `root`), deepest first,
/// then `root` itself.
fn fsync_tree(root: &Path, index: usize, plan: &[PlanStripe]) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for stripe in plan {
        for (_, rel) in stripe.targets().filter(|&(r, _)| r == index) {
            let mut p = root.join(rel);
            while p.pop() && p.starts_with(root) {
                dirs.insert(p.clone());
            }
        }
    }
    for dir in dirs.iter().rev() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Hash the whole source through the same open file the shards are read from, so that the
/// content hash always describes the bytes that were committed even if the path is
/// replaced (renamed over) meanwhile.
fn hash_whole_file(file: &File, source: &Path, progress: &Progress) -> Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; WINDOW as usize];
    let mut offset = 0u64;
    loop {
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let n = match platform::read_at(file, &mut buf, offset) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).at(source),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Read the members in order, each through a handle of its own opened without following a
/// link and checked once read: the hash of their concatenation and the hash of each.
fn hash_members(set: &MemberSet<'_>, progress: &Progress) -> Result<(Hash, Vec<Hash>)> {
    let mut content = blake3::Hasher::new();
    let mut each = Vec::with_capacity(set.members.len());
    let mut buf = vec![0u8; WINDOW as usize];
    for (j, (path, len)) in set.members.iter().enumerate() {
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let file = set.open(j)?;
        let mut member = blake3::Hasher::new();
        let mut offset = 0u64;
        while offset < *len {
            let n = WINDOW.min(len - offset) as usize;
            platform::read_exact_at(&file, &mut buf[..n], offset)
                .map_err(|e| source_read_error(e, path))?;
            content.update(&buf[..n]);
            member.update(&buf[..n]);
            offset += n as u64;
        }
        set.check(j, &file)?;
        each.push(*member.finalize().as_bytes());
    }
    Ok((*content.finalize().as_bytes(), each))
}

/// A relative path made only of normal components (no `/`, `..`, `.` or prefix).
fn is_plain_relative(path: &Path) -> bool {
    use std::path::Component;
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}
