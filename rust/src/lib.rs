//! BlockFrame core: Reed-Solomon coding, BLAKE3 chunk hashing and Merkle roots, the commit
//! pipeline and the verified reader. The modules are plain Rust; only this file touches
//! PyO3 (behind the `python` feature, which maturin enables).

pub mod cache;
pub mod codec;
pub mod commit;
pub mod error;
pub mod hashing;
pub mod layout;
pub mod local;
mod platform;
pub mod prefetch;
pub mod reader;
pub mod shardio;
pub mod source;

pub use error::{Error, Result};

#[cfg(feature = "python")]
mod python {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use pyo3::buffer::PyBuffer;
    use pyo3::create_exception;
    use pyo3::exceptions::PyException;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyTuple};

    use crate::cache::ChunkCache;
    use crate::commit::{PlanParity, PlanShard, PlanStripe, Progress};
    use crate::error::{catch_panic, Error};
    use crate::hashing::{self, Hash};
    use crate::layout::{ObjectSpec, ShardSpec, StripeSpec};
    use crate::reader::{BadShard, Reader};
    use crate::shardio::Problem;
    use crate::source::{Gather, Refusal, ShardSink, ShardSource, ShardWriter};

    create_exception!(
        _core,
        CoreError,
        PyException,
        "Any failure of the BlockFrame core."
    );
    create_exception!(
        _core,
        UnrecoverableError,
        CoreError,
        "Too few verified shards survive to rebuild the requested bytes."
    );
    create_exception!(
        _core,
        CancelledError,
        CoreError,
        "The operation was cancelled."
    );
    create_exception!(
        _core,
        SourceChangedError,
        CoreError,
        "The source file changed while it was being committed."
    );

    fn to_py(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            // What a callable raised to stop everything (KeyboardInterrupt, SystemExit)
            // goes back to the caller as it was raised.
            Error::Interrupted { cause, .. } => match cause.downcast::<PyErr>() {
                Ok(err) => *err,
                Err(_) => CoreError::new_err(msg),
            },
            Error::Unrecoverable { .. } | Error::RebuildMismatch { .. } => {
                UnrecoverableError::new_err(msg)
            }
            Error::Cancelled => CancelledError::new_err(msg),
            Error::SourceChanged { .. } => SourceChangedError::new_err(msg),
            _ => CoreError::new_err(msg),
        }
    }

    type BadTuple = (usize, usize, &'static str);

    fn bad_tuples(bad: &[BadShard]) -> Vec<BadTuple> {
        bad.iter()
            .map(|b| (b.stripe, b.shard, b.damage.as_str()))
            .collect()
    }

    /// (path, length, concatenated chunk hashes), optionally followed by the shard's own
    /// object directory (on another volume) that `path` is relative to.
    #[derive(FromPyObject)]
    enum ShardArg {
        Placed(PathBuf, u64, Vec<u8>, PathBuf),
        Plain(PathBuf, u64, Vec<u8>),
    }

    fn shard_spec(arg: ShardArg) -> PyResult<ShardSpec> {
        let (path, len, raw, dir) = match arg {
            ShardArg::Placed(path, len, raw, dir) => (path, len, raw, Some(dir)),
            ShardArg::Plain(path, len, raw) => (path, len, raw, None),
        };
        let hashes = hashing::split_hashes(&raw).ok_or_else(|| {
            CoreError::new_err(format!(
                "{}: hashes are not 32-byte digests",
                path.display()
            ))
        })?;
        Ok(ShardSpec {
            path,
            len,
            hashes,
            dir,
        })
    }

    /// Whether an exception raised by a callable must stop the whole operation and reach
    /// the caller as it is: any BaseException that is not an Exception (KeyboardInterrupt,
    /// SystemExit). Ordinary exceptions only mean that this shard could not be had.
    fn must_stop(py: Python<'_>, e: &PyErr) -> bool {
        !e.is_instance_of::<PyException>(py)
    }

    /// A bounded cache of verified chunks, shared by the readers it is given to.
    #[pyclass(frozen, name = "Cache", module = "blockframe._core")]
    struct PyCache {
        inner: Arc<ChunkCache>,
    }

    #[pymethods]
    impl PyCache {
        #[new]
        fn new(max_bytes: usize) -> Self {
            Self {
                inner: Arc::new(ChunkCache::new(max_bytes)),
            }
        }

        /// (entries, bytes held, byte budget, hits, misses)
        fn stats(&self) -> (usize, usize, usize, u64, u64) {
            self.inner.stats()
        }
    }

    /// Shard bytes fetched by a Python callable `fetch(stripe, shard, start, length)` that
    /// returns bytes (shorter when the shard is shorter), None when the shard is missing,
    /// or raises when it cannot be read. Used by the remote client; every byte is still
    /// verified by the reader. A KeyboardInterrupt (any BaseException that is not an
    /// Exception) stops the operation and is re-raised to its caller.
    struct PyFetch(Py<PyAny>);

    impl ShardSource for PyFetch {
        fn read_range(
            &self,
            stripe: usize,
            shard: usize,
            start: u64,
            buf: &mut [u8],
        ) -> crate::Result<(usize, Option<Problem>)> {
            Python::attach(|py| {
                let got = match self.0.call1(py, (stripe, shard, start, buf.len())) {
                    Ok(got) => got,
                    Err(e) if must_stop(py, &e) => {
                        return Err(Error::Interrupted {
                            stripe,
                            shard,
                            cause: Box::new(e),
                        })
                    }
                    // The fetcher logs its own failures; the reader rebuilds the range
                    // from other shards or fails the read.
                    Err(_) => return Ok((0, Some(Problem::Unreadable))),
                };
                if got.is_none(py) {
                    return Ok((0, Some(Problem::Missing)));
                }
                // bytes, or any buffer (a memoryview slice of a fetched block avoids a copy).
                if let Ok(bytes) = got.cast_bound::<PyBytes>(py) {
                    let data = bytes.as_bytes();
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    return Ok((n, (n < buf.len()).then_some(Problem::Short)));
                }
                Ok(match PyBuffer::<u8>::get(got.bind(py)) {
                    Ok(view) if view.is_c_contiguous() => {
                        let n = view.len_bytes().min(buf.len());
                        match view.copy_to_slice(py, &mut buf[..n]) {
                            Ok(()) => (n, (n < buf.len()).then_some(Problem::Short)),
                            Err(_) => (0, Some(Problem::Unreadable)),
                        }
                    }
                    _ => (0, Some(Problem::Unreadable)),
                })
            })
        }
    }

    /// Repaired shards handed whole to a Python callable `store(stripe, shard, data)`; an
    /// exception from it fails the repair with its message, and a KeyboardInterrupt (any
    /// BaseException that is not an Exception) is re-raised to the caller.
    struct PyStore(Py<PyAny>);

    impl ShardSink for PyStore {
        fn begin(
            &self,
            stripe: usize,
            shard: usize,
            path: &std::path::Path,
        ) -> crate::Result<Box<dyn ShardWriter + '_>> {
            Ok(Box::new(Gather::new(stripe, shard, path, move |data| {
                Python::attach(|py| {
                    let data = PyBytes::new(py, &data);
                    match self.0.call1(py, (stripe, shard, data)) {
                        Ok(_) => Ok(()),
                        Err(e) if must_stop(py, &e) => Err(Refusal::Stop(Error::Interrupted {
                            stripe,
                            shard,
                            cause: Box::new(e),
                        })),
                        Err(e) => Err(Refusal::Message(e.to_string())),
                    }
                })
            })))
        }
    }

    /// A verified reader over one committed object.
    #[pyclass(frozen, name = "Object", module = "blockframe._core")]
    struct PyObjectReader {
        reader: Reader,
    }

    #[pymethods]
    impl PyObjectReader {
        #[new]
        #[pyo3(signature = (root, chunk_size, stripes, cache=None, fetch=None, store=None))]
        fn new(
            root: PathBuf,
            chunk_size: u64,
            stripes: Vec<(Vec<ShardArg>, Vec<ShardArg>)>,
            cache: Option<PyRef<'_, PyCache>>,
            fetch: Option<Py<PyAny>>,
            store: Option<Py<PyAny>>,
        ) -> PyResult<Self> {
            if store.is_some() && fetch.is_none() {
                return Err(CoreError::new_err(
                    "store is only for objects read through fetch: \
                     a local object is repaired in place",
                ));
            }
            let stripes = stripes
                .into_iter()
                .map(|(data, parity)| {
                    Ok(StripeSpec {
                        data: data.into_iter().map(shard_spec).collect::<PyResult<_>>()?,
                        parity: parity
                            .into_iter()
                            .map(shard_spec)
                            .collect::<PyResult<_>>()?,
                    })
                })
                .collect::<PyResult<Vec<_>>>()?;
            let spec = ObjectSpec::new(&root, chunk_size, stripes).map_err(to_py)?;
            let cache = cache.map(|c| Arc::clone(&c.inner));
            let reader = match (fetch, cache) {
                (Some(fetch), cache) => Reader::with_source(spec, cache, Box::new(PyFetch(fetch))),
                (None, Some(cache)) => Reader::with_cache(spec, cache),
                (None, None) => Reader::new(spec),
            };
            let reader = match store {
                Some(store) => reader.with_sink(Box::new(PyStore(store))),
                None => reader,
            };
            Ok(Self { reader })
        }

        #[getter]
        fn size(&self) -> u64 {
            self.reader.spec().size()
        }

        /// Merkle root over every chunk hash of the object.
        fn merkle_root<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &hashing::merkle_root(&self.reader.spec().leaves()))
        }

        /// Verified bytes `[offset, offset + size)` (clipped to the object) and the shards
        /// found bad on the way.
        fn read<'py>(
            &self,
            py: Python<'py>,
            offset: u64,
            size: u64,
        ) -> PyResult<(Bound<'py, PyBytes>, Vec<BadTuple>)> {
            let total = self.reader.spec().size();
            let n = size.min(total.saturating_sub(offset)) as usize;
            if n == 0 {
                // Clipped to nothing (at or past the end): no bytes, nothing to verify.
                return Ok((PyBytes::new(py, &[]), Vec::new()));
            }
            let mut bad = Vec::new();
            let bytes = PyBytes::new_with(py, n, |buf| {
                py.detach(|| catch_panic("read", || self.reader.read(offset, buf, &mut bad)))
                    .map_err(to_py)
            })?;
            Ok((bytes, bad_tuples(&bad)))
        }

        /// Fill the writable buffer `buffer` with verified bytes from `offset` (fewer at the
        /// end of the object): (bytes written, shards found bad). The GIL is released while
        /// reading, so the buffer must not be touched by other Python code meanwhile.
        fn read_into(
            &self,
            py: Python<'_>,
            buffer: PyBuffer<u8>,
            offset: u64,
        ) -> PyResult<(usize, Vec<BadTuple>)> {
            if buffer.readonly() || !buffer.is_c_contiguous() {
                return Err(CoreError::new_err(
                    "read_into needs a writable contiguous buffer",
                ));
            }
            let total = self.reader.spec().size();
            let n = (buffer.len_bytes() as u64).min(total.saturating_sub(offset)) as usize;
            if n == 0 {
                // At or past the end (or an empty buffer): no bytes, nothing to verify.
                return Ok((0, Vec::new()));
            }
            let ptr = buffer.buf_ptr() as usize;
            let mut bad = Vec::new();
            py.detach(|| {
                catch_panic("read_into", || {
                    // SAFETY: the PyBuffer keeps the exporter's memory alive and pinned until it
                    // is dropped after this call; it is writable and C-contiguous (checked
                    // above) and at least `n` bytes long. No Python code runs on it while the
                    // GIL is released here, as documented for callers.
                    let out = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, n) };
                    self.reader.read(offset, out, &mut bad)
                })
            })
            .map_err(to_py)?;
            Ok((n, bad_tuples(&bad)))
        }

        /// Verify one shard: (bad chunk indices, damage or None).
        fn verify_shard(
            &self,
            py: Python<'_>,
            stripe: usize,
            shard: usize,
        ) -> PyResult<(Vec<u64>, Option<&'static str>)> {
            self.check_index(stripe, shard)?;
            let check = py
                .detach(|| catch_panic("verify_shard", || self.reader.verify_shard(stripe, shard)))
                .map_err(to_py)?;
            Ok((check.bad_chunks, check.damage.map(|d| d.as_str())))
        }

        /// Rebuild a damaged shard (verified): in place and atomically for a local object,
        /// through `store` for one read through `fetch`. Returns (chunks rebuilt, other
        /// shards found bad while rebuilding).
        fn repair_shard(
            &self,
            py: Python<'_>,
            stripe: usize,
            shard: usize,
        ) -> PyResult<(u64, Vec<BadTuple>)> {
            self.check_index(stripe, shard)?;
            if !self.reader.can_repair() {
                return Err(CoreError::new_err(
                    "a remote object cannot be repaired here: it was opened without a store",
                ));
            }
            let mut bad = Vec::new();
            let n = py
                .detach(|| {
                    catch_panic("repair_shard", || {
                        self.reader.repair_shard(stripe, shard, &mut bad)
                    })
                })
                .map_err(to_py)?;
            bad.retain(|b| !(b.stripe == stripe && b.shard == shard));
            Ok((n, bad_tuples(&bad)))
        }
    }

    impl PyObjectReader {
        fn check_index(&self, stripe: usize, shard: usize) -> PyResult<()> {
            let stripes = &self.reader.spec().stripes;
            if stripe >= stripes.len() || shard >= stripes[stripe].shard_count() {
                return Err(CoreError::new_err(format!(
                    "no shard {shard} in stripe {stripe}"
                )));
            }
            Ok(())
        }
    }

    /// How often a running commit reports progress and looks for Ctrl+C.
    const REPORT_EVERY: Duration = Duration::from_millis(200);

    type PlanArg = (Vec<(PathBuf, u64)>, Vec<PathBuf>);

    /// What is committed: one file, or member files (path, length) whose concatenation is
    /// the object. A str (or os.PathLike) is a file; a list of tuples is members.
    #[derive(FromPyObject)]
    enum SourceArg {
        File(PathBuf),
        Members(Vec<(PathBuf, u64)>),
    }

    /// The commit plan: `stripes` with each shard's root index from `placement` (per
    /// stripe, data then parity), or root 0 for all without one.
    fn build_plan(
        stripes: Vec<PlanArg>,
        placement: Option<Vec<Vec<usize>>>,
        roots: usize,
    ) -> PyResult<Vec<PlanStripe>> {
        if let Some(placement) = &placement {
            if placement.len() != stripes.len() {
                return Err(CoreError::new_err(format!(
                    "placement has {} entries for {} stripes",
                    placement.len(),
                    stripes.len()
                )));
            }
        }
        stripes
            .into_iter()
            .enumerate()
            .map(|(si, (data, parity))| {
                let n = data.len() + parity.len();
                let at = match &placement {
                    Some(p) if p[si].len() != n => {
                        return Err(CoreError::new_err(format!(
                            "placement of stripe {si} has {} root indices for {n} shards",
                            p[si].len()
                        )));
                    }
                    Some(p) => p[si].clone(),
                    None => vec![0; n],
                };
                if let Some(s) = at.iter().position(|&r| r >= roots) {
                    return Err(CoreError::new_err(format!(
                        "placement of stripe {si} shard {s}: root index {} out of range \
                         ({roots} roots)",
                        at[s]
                    )));
                }
                let k = data.len();
                Ok(PlanStripe {
                    data: data
                        .into_iter()
                        .zip(&at)
                        .map(|((path, len), &root)| PlanShard { root, path, len })
                        .collect(),
                    parity: parity
                        .into_iter()
                        .zip(&at[k..])
                        .map(|(path, &root)| PlanParity { root, path })
                        .collect(),
                })
            })
            .collect()
    }

    /// Write the shards of `source` under `roots` ((directory, durable) pairs), each shard
    /// under the root `placement` gives it (all under the first without one). Shards under
    /// a durable root are fsynced with their directories; the others are only written.
    /// Calls `progress(bytes_done)` a few times a second; Ctrl+C (or an exception from
    /// `progress`) cancels. `source` is a file, or a list of member files (path, length)
    /// whose concatenation is the object (a pack). Returns the BLAKE3 hash of the object
    /// and, per stripe, the concatenated chunk hashes of each shard; for members, also the
    /// BLAKE3 hash of each member, in order (a 3-tuple).
    #[pyfunction]
    #[pyo3(
        name = "commit",
        signature = (source, roots, chunk_size, stripes, progress=None, placement=None)
    )]
    #[allow(clippy::too_many_arguments)]
    fn commit_file<'py>(
        py: Python<'py>,
        source: SourceArg,
        roots: Vec<(PathBuf, bool)>,
        chunk_size: u64,
        stripes: Vec<PlanArg>,
        progress: Option<Py<PyAny>>,
        placement: Option<Vec<Vec<usize>>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if roots.is_empty() {
            return Err(CoreError::new_err("commit needs at least one root"));
        }
        let plan = build_plan(stripes, placement, roots.len())?;
        let state = Progress::default();
        let mut interrupt: Option<PyErr> = None;
        let result = py.detach(|| {
            catch_panic("commit", || {
                crate::commit::run_watched(
                    &state,
                    REPORT_EVERY,
                    || match &source {
                        SourceArg::File(path) => {
                            crate::commit::commit_to_roots(path, &roots, chunk_size, &plan, &state)
                        }
                        SourceArg::Members(members) => crate::commit::commit_members(
                            members, &roots, chunk_size, &plan, &state,
                        ),
                    },
                    |done| {
                        Python::attach(|py| {
                            let reported = progress
                                .as_ref()
                                .map_or(Ok(()), |cb| cb.call1(py, (done,)).map(drop));
                            match reported.and_then(|()| py.check_signals()) {
                                Ok(()) => true,
                                Err(e) => {
                                    interrupt.get_or_insert(e);
                                    false
                                }
                            }
                        })
                    },
                )
            })
        });
        if let Some(e) = interrupt {
            return Err(e);
        }
        let out = result.map_err(to_py)?;
        let hashes: Vec<Vec<Bound<'py, PyBytes>>> = out
            .hashes
            .iter()
            .map(|stripe| {
                stripe
                    .iter()
                    .map(|shard| PyBytes::new(py, &shard.concat()))
                    .collect()
            })
            .collect();
        let content = PyBytes::new(py, &out.content_hash);
        match source {
            SourceArg::File(_) => (content, hashes).into_pyobject(py),
            SourceArg::Members(_) => {
                let members: Vec<Bound<'py, PyBytes>> = out
                    .member_hashes
                    .iter()
                    .map(|h| PyBytes::new(py, h))
                    .collect();
                (content, hashes, members).into_pyobject(py)
            }
        }
    }

    /// Merkle root over concatenated 32-byte leaves.
    #[pyfunction]
    fn merkle_root<'py>(py: Python<'py>, leaves: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let leaves: Vec<Hash> = hashing::split_hashes(leaves)
            .ok_or_else(|| CoreError::new_err("leaves are not 32-byte digests"))?;
        Ok(PyBytes::new(py, &hashing::merkle_root(&leaves)))
    }

    /// BLAKE3 hash of `data`.
    #[pyfunction]
    #[pyo3(name = "blake3")]
    fn blake3_digest<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        let digest = hashing::chunk_hash(data);
        PyBytes::new(py, &digest)
    }

    /// BLAKE3 hash of a file's content, or of several files' concatenated (a pack), read
    /// in 1 MiB pieces.
    #[pyfunction]
    fn hash_file<'py>(py: Python<'py>, path: PathOrPaths) -> PyResult<Bound<'py, PyBytes>> {
        let paths = match path {
            PathOrPaths::One(p) => vec![p],
            PathOrPaths::Many(ps) => ps,
        };
        let digest = py
            .detach(|| catch_panic("hash_file", || crate::hashing::hash_files(&paths)))
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &digest))
    }

    /// Ask the OS to read the files below object directory `dir` into its cache, up to
    /// `budget` bytes, in the order a scrub reads them (see `prefetch.rs`). In the
    /// background by default, returning 0 at once; with `background=False`, returns the
    /// bytes hinted once done. Only a hint (Linux; elsewhere nothing is read).
    #[pyfunction]
    #[pyo3(signature = (dir, budget, background = true))]
    fn prefetch(py: Python<'_>, dir: PathBuf, budget: u64, background: bool) -> u64 {
        if background {
            crate::prefetch::prefetch_in_background(&dir, budget);
            0
        } else {
            py.detach(|| crate::prefetch::prefetch_tree(&dir, budget))
        }
    }

    #[derive(FromPyObject)]
    enum PathOrPaths {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }

    #[pymodule]
    #[pyo3(name = "_core")]
    fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add_class::<PyObjectReader>()?;
        m.add_class::<PyCache>()?;
        m.add_function(wrap_pyfunction!(commit_file, m)?)?;
        m.add_function(wrap_pyfunction!(merkle_root, m)?)?;
        m.add_function(wrap_pyfunction!(hash_file, m)?)?;
        m.add_function(wrap_pyfunction!(prefetch, m)?)?;
        m.add_function(wrap_pyfunction!(blake3_digest, m)?)?;
        m.add("CoreError", py.get_type::<CoreError>())?;
        m.add("UnrecoverableError", py.get_type::<UnrecoverableError>())?;
        m.add("CancelledError", py.get_type::<CancelledError>())?;
        m.add("SourceChangedError", py.get_type::<SourceChangedError>())?;
        m.add("CHUNK_ALIGN", crate::codec::ALIGN)?;
        Ok(())
    }
}
