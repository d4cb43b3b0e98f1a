//! The one error type of the core. Every variant carries enough context to be shown to a
//! user as a single line.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed on a specific file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// The layout handed to the core is inconsistent (wrong hash counts, bad geometry...).
    #[error("invalid layout: {0}")]
    Layout(String),

    /// The Reed-Solomon library refused an operation.
    #[error("Reed-Solomon codec: {0}")]
    Codec(String),

    /// Too few verified shards survive to rebuild a byte range of a stripe.
    #[error(
        "stripe {stripe}: bytes {start}..{end} cannot be recovered: \
         {good} verified shards, {needed} needed"
    )]
    Unrecoverable {
        stripe: usize,
        start: u64,
        end: u64,
        good: usize,
        needed: usize,
    },

    /// Bytes rebuilt by the decoder did not match the manifest hash. With verified inputs
    /// this means a bug or a wrong manifest; the bytes are never used.
    #[error("{path}: rebuilt bytes {start}..{end} do not match the manifest hash")]
    RebuildMismatch { path: PathBuf, start: u64, end: u64 },

    /// The source file changed while it was being committed.
    #[error("{path}: the file changed while it was being committed")]
    SourceChanged { path: PathBuf },

    /// A damaged shard of an object whose shards come from another source (not local
    /// files) has nowhere to go once repaired: the reader was given no sink.
    #[error(
        "{path} (stripe {stripe}, shard {shard}): a remote object cannot be repaired here \
         (no store for repaired shards)"
    )]
    NoSink {
        stripe: usize,
        shard: usize,
        path: PathBuf,
    },

    /// The sink refused a repaired shard; whatever held the damaged shard is as it was, as
    /// far as the sink guarantees.
    #[error(
        "{path} (stripe {stripe}, shard {shard}): storing the repaired shard failed: {message}"
    )]
    Store {
        stripe: usize,
        shard: usize,
        path: PathBuf,
        message: String,
    },

    /// The caller asked the operation to stop.
    #[error("cancelled")]
    Cancelled,

    /// A source or sink callback asked to stop the whole operation instead of reporting an
    /// unreadable shard (the user interrupted it). `cause` is the callback's own error,
    /// handed back to the caller unchanged.
    #[error("stripe {stripe}, shard {shard}: interrupted: {cause}")]
    Interrupted {
        stripe: usize,
        shard: usize,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A repair found the object's directory gone (removed, or replaced by a new commit):
    /// nothing was written, and no directory was created for it.
    #[error("{path}: the object directory is gone (removed or replaced); nothing was written")]
    ObjectGone { path: PathBuf },

    /// A bug: code of the core panicked. The panic was caught where it happened so that it
    /// reaches the caller as an error rather than unwinding into it.
    #[error("internal error in {context}: {message}")]
    Panicked { context: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The error for a caught panic with payload `payload`, raised in `context`.
    pub fn panicked(context: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-text payload".to_string()
        };
        Error::Panicked {
            context: context.to_string(),
            message,
        }
    }
}

/// Run `f`, turning a panic into [`Error::Panicked`] with `context`, so that no panic
/// crosses into a caller that cannot handle one (Python, a joined thread's owner).
pub fn catch_panic<T>(context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(Error::panicked(context, &*payload)))
}

/// The result of a joined scoped thread, its panic turned into [`Error::Panicked`].
pub(crate) fn joined<T>(
    context: &str,
    handle: std::thread::ScopedJoinHandle<'_, Result<T>>,
) -> Result<T> {
    handle
        .join()
        .unwrap_or_else(|payload| Err(Error::panicked(context, &*payload)))
}

/// Attach a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
