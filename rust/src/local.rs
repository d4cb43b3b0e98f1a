//! The shard files of an object on local disk, as a [`ShardSource`] and a [`ShardSink`].
//!
//! Nothing below an object's directory is trusted: a shard path, a directory on the way to
//! it, or a temporary name may have been replaced by a symbolic link (to anywhere the user
//! can write), a FIFO or anything else. So a shard is never reached by joining its path and
//! letting the kernel follow it:
//!
//! - The object directory is opened as named (that path is the caller's, and may itself
//!   pass through links, e.g. a volume mounted through one). Every component below it is
//!   opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, and the
//!   shard itself with `O_NOFOLLOW | O_NONBLOCK` and then checked to be a regular file. A
//!   link, a FIFO or any other non-file makes the shard unreadable (it is rebuilt from the
//!   others), never followed or waited on.
//! - A repair creates its temporary file with `O_CREAT | O_EXCL | O_NOFOLLOW` and an
//!   unpredictable name in the shard's real directory, and renames it over the shard within
//!   that directory. A missing directory on the way is created (`mkdirat`) only inside a
//!   directory already opened this way; a link standing where a directory belongs is
//!   removed (the link, never what it points to) and replaced by a real directory, which is
//!   what repairing means. Anything else in the way (a file, a FIFO) fails the repair.
//! - The object directory itself is never created: if it is gone (the object was removed
//!   or replaced), a repair fails with [`Error::ObjectGone`] instead of leaving a zombie
//!   directory behind.
//!
//! On Windows the same walk checks each component with `symlink_metadata` (no symbolic
//! link or other reparse point) before using it; that check is not free of races.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::layout::ObjectSpec;
use crate::shardio::{read_full_at, Problem};
use crate::source::{ShardSink, ShardSource, ShardWriter};

/// Where one shard lives: its object directory and its path below it.
#[derive(Debug, Clone)]
struct Place {
    /// The object directory (on the shard's volume): opened as named, never created.
    dir: PathBuf,
    /// Directories below `dir`, then the file name: each walked without following links.
    below: Vec<OsString>,
}

impl Place {
    fn shown(&self) -> PathBuf {
        let mut p = self.dir.clone();
        p.extend(&self.below);
        p
    }

    fn file_name(&self) -> &OsStr {
        self.below.last().expect("a shard path names a file")
    }

    fn dirs(&self) -> &[OsString] {
        &self.below[..self.below.len() - 1]
    }
}

/// The local shard files of one object: read without following any link below the
/// object directory, replaced atomically by repairs (see the module documentation).
#[derive(Debug, Clone)]
pub struct LocalFiles {
    places: Arc<Vec<Vec<Place>>>,
}

impl LocalFiles {
    /// The shard files `spec` names: each under its own object directory when it has one,
    /// else under the object's root. A shard given by an absolute path (and no directory)
    /// is taken to be in its parent directory: only the file itself is then checked.
    pub fn new(spec: &ObjectSpec) -> Self {
        let places = spec
            .stripes
            .iter()
            .map(|st| {
                st.data
                    .iter()
                    .chain(&st.parity)
                    .map(|sh| {
                        let (dir, rel) = match (&sh.dir, sh.path.is_absolute()) {
                            (Some(dir), _) => (dir.clone(), sh.path.as_path()),
                            (None, false) => (spec.root.clone(), sh.path.as_path()),
                            (None, true) => (
                                sh.path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                                Path::new(sh.path.file_name().unwrap_or_default()),
                            ),
                        };
                        let below = rel
                            .components()
                            .filter_map(|c| match c {
                                Component::Normal(n) => Some(n.to_os_string()),
                                _ => None,
                            })
                            .collect();
                        Place { dir, below }
                    })
                    .collect()
            })
            .collect();
        Self {
            places: Arc::new(places),
        }
    }

    fn place(&self, stripe: usize, shard: usize) -> &Place {
        &self.places[stripe][shard]
    }

    /// Open a shard for reading: a regular file reached without following any link.
    fn open(&self, stripe: usize, shard: usize) -> io::Result<File> {
        let place = self.place(stripe, shard);
        let mut dir = sys::open_root(&place.dir)?;
        for name in place.dirs() {
            dir = sys::open_subdir(&dir, name)?;
        }
        sys::open_file(&dir, place.file_name())
    }
}

impl ShardSource for LocalFiles {
    fn read_range(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(usize, Option<Problem>)> {
        Ok(match self.open(stripe, shard) {
            Ok(file) => read_full_at(&file, buf, start),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, Some(Problem::Missing)),
            Err(_) => (0, Some(Problem::Unreadable)),
        })
    }

    fn has_more(&self, stripe: usize, shard: usize, len: u64) -> Result<bool> {
        Ok(self
            .open(stripe, shard)
            .and_then(|f| f.metadata())
            .is_ok_and(|m| m.len() > len))
    }
}

impl ShardSink for LocalFiles {
    fn begin(
        &self,
        stripe: usize,
        shard: usize,
        _path: &Path,
    ) -> Result<Box<dyn ShardWriter + '_>> {
        Ok(Box::new(Replacement::create(self.place(stripe, shard))?))
    }

    fn check(&self, stripe: usize, shard: usize) -> Result<()> {
        open_object_dir(self.place(stripe, shard)).map(drop)
    }

    fn verify_first(&self) -> bool {
        true
    }
}

/// Open the object directory of a shard to write in it: never created, so that a repair
/// does not leave a zombie directory behind.
fn open_object_dir(place: &Place) -> Result<sys::Dir> {
    match sys::open_root(&place.dir) {
        Ok(dir) => Ok(dir),
        Err(_) if !place.dir.is_dir() => Err(Error::ObjectGone {
            path: place.dir.clone(),
        }),
        Err(e) => Err(e).at(&place.dir),
    }
}

/// A new version of a shard file being written beside it: a temporary file in the
/// shard's real directory, renamed over the shard once complete and synced.
struct Replacement {
    file: File,
    /// The shard's directory, as opened by the walk.
    dir: sys::Dir,
    /// Directories this replacement created entries in (parents of created directories),
    /// deepest last; synced after the rename.
    touched: Vec<(sys::Dir, PathBuf)>,
    tmp: OsString,
    name: OsString,
    shown: PathBuf,
    dir_shown: PathBuf,
    done: bool,
}

impl Replacement {
    fn create(place: &Place) -> Result<Self> {
        let mut dir = open_object_dir(place)?;
        let mut dir_shown = place.dir.clone();
        let mut touched = Vec::new();
        for name in place.dirs() {
            let child = dir_shown.join(name);
            let (sub, made) = real_subdir(&dir, name, &child)?;
            if made {
                touched.push((dir, dir_shown));
            }
            dir = sub;
            dir_shown = child;
        }
        let name = place.file_name().to_os_string();
        let (file, tmp) = create_temporary(&dir, &name, &dir_shown)?;
        Ok(Self {
            file,
            dir,
            touched,
            tmp,
            name,
            shown: place.shown(),
            dir_shown,
            done: false,
        })
    }
}

/// Open directory `name` in `parent` without following a link, creating it if it is
/// missing and replacing a link that stands in its place. Returns it and whether an entry
/// of `parent` was created.
fn real_subdir(parent: &sys::Dir, name: &OsStr, shown: &Path) -> Result<(sys::Dir, bool)> {
    let mut made = false;
    // A few rounds at most: each one removes an obstacle or creates the directory, and
    // only a concurrent writer re-creating obstacles could make it go on.
    for _ in 0..3 {
        match sys::open_subdir(parent, name) {
            Ok(dir) => return Ok((dir, made)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if !sys::is_link(parent, name) {
                    return Err(e).at(shown);
                }
                // A link where a directory belongs: remove the link itself (its target
                // is left alone) and make the real directory.
                match sys::remove_link(parent, name) {
                    Ok(()) => made = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at(shown),
                }
            }
        }
        match sys::make_dir(parent, name) {
            Ok(()) => made = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at(shown),
        }
    }
    sys::open_subdir(parent, name)
        .map(|dir| (dir, made))
        .at(shown)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An unpredictable number for a temporary name: SipHash with the process's random keys
/// (std's `RandomState`) over the pid, a counter and the time.
fn random_u64() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Create `.<name>.repair-<pid>-<random>` exclusively in `dir` (never through a link).
fn create_temporary(dir: &sys::Dir, name: &OsStr, dir_shown: &Path) -> Result<(File, OsString)> {
    loop {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".repair-{}-{}", std::process::id(), random_u64()));
        match sys::create_new(dir, &tmp) {
            Ok(file) => return Ok((file, tmp)),
            // Someone holds that name (a link planted there included): take another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).at(&dir_shown.join(&tmp)),
        }
    }
}

impl ShardWriter for Replacement {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let at = self.dir_shown.join(&self.tmp);
        self.file.write_all(data).at(&at)
    }

    /// fsync, rename over the shard within its directory, fsync the directories changed.
    fn commit(mut self: Box<Self>) -> Result<()> {
        let at = self.dir_shown.join(&self.tmp);
        self.file.sync_all().at(&at)?;
        sys::rename(&self.dir, &self.tmp, &self.name).at(&self.shown)?;
        self.done = true;
        sys::sync_dir(&self.dir).at(&self.dir_shown)?;
        for (dir, shown) in self.touched.iter().rev() {
            sys::sync_dir(dir).at(shown)?;
        }
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        // An abandoned attempt: remove the temporary file so no partial file is left.
        if !self.done {
            let _ = sys::remove_file(&self.dir, &self.tmp);
        }
    }
}

#[cfg(unix)]
pub(crate) mod sys {
    //! Directory descriptors: every name is resolved in an open directory, without
    //! following a link.

    use std::ffi::OsStr;
    use std::fs::File;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

    pub type Dir = OwnedFd;

    const DIR_FLAGS: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::CLOEXEC)
        .union(OFlags::NONBLOCK);

    pub fn open_root(path: &Path) -> io::Result<Dir> {
        Ok(rfs::open(path, DIR_FLAGS, Mode::empty())?)
    }

    pub fn open_subdir(dir: &Dir, name: &OsStr) -> io::Result<Dir> {
        Ok(rfs::openat(
            dir,
            name,
            DIR_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }

    /// A regular file: `O_NONBLOCK` so that a FIFO or device does not block the open, and
    /// then refused.
    pub fn open_file(dir: &Dir, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, name, flags, Mode::empty())?;
        if FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(File::from(fd))
    }

    pub fn is_link(dir: &Dir, name: &OsStr) -> bool {
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
    }

    /// Remove a link (unlinkat without AT_REMOVEDIR never removes a directory).
    pub fn remove_link(dir: &Dir, name: &OsStr) -> io::Result<()> {
        Ok(rfs::unlinkat(dir, name, AtFlags::empty())?)
    }

    pub fn make_dir(dir: &Dir, name: &OsStr) -> io::Result<()> {
        Ok(rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755))?)
    }

    pub fn create_new(dir: &Dir, name: &OsStr) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rfs::openat(
            dir,
            name,
            flags,
            Mode::from_raw_mode(0o644),
        )?))
    }

    pub fn rename(dir: &Dir, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(rfs::renameat(dir, from, dir, to)?)
    }

    pub fn remove_file(dir: &Dir, name: &OsStr) -> io::Result<()> {
        Ok(rfs::unlinkat(dir, name, AtFlags::empty())?)
    }

    pub fn sync_dir(dir: &Dir) -> io::Result<()> {
        Ok(rfs::fsync(dir)?)
    }
}

#[cfg(windows)]
pub(crate) mod sys {
    //! Paths checked component by component: no symbolic link or other reparse point is
    //! used. (Unlike the descriptor walk on Unix, this can race with a concurrent change.)

    use std::ffi::OsStr;
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::os::windows::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    pub type Dir = PathBuf;

    const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;

    fn is_reparse(m: &fs::Metadata) -> bool {
        m.file_type().is_symlink() || m.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0
    }

    pub fn open_root(path: &Path) -> io::Result<Dir> {
        if fs::metadata(path)?.is_dir() {
            Ok(path.to_path_buf())
        } else {
            Err(io::Error::other("not a directory"))
        }
    }

    pub fn open_subdir(dir: &Dir, name: &OsStr) -> io::Result<Dir> {
        let path = dir.join(name);
        let m = fs::symlink_metadata(&path)?;
        if is_reparse(&m) {
            return Err(io::Error::other("a link"));
        }
        if !m.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        Ok(path)
    }

    pub fn open_file(dir: &Dir, name: &OsStr) -> io::Result<File> {
        let path = dir.join(name);
        let m = fs::symlink_metadata(&path)?;
        if is_reparse(&m) || !m.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        File::open(path)
    }

    pub fn is_link(dir: &Dir, name: &OsStr) -> bool {
        fs::symlink_metadata(dir.join(name)).is_ok_and(|m| is_reparse(&m))
    }

    /// Remove a link to a directory (or to a file) itself, never its target.
    pub fn remove_link(dir: &Dir, name: &OsStr) -> io::Result<()> {
        let path = dir.join(name);
        fs::remove_dir(&path).or_else(|_| fs::remove_file(&path))
    }

    pub fn make_dir(dir: &Dir, name: &OsStr) -> io::Result<()> {
        fs::create_dir(dir.join(name))
    }

    pub fn create_new(dir: &Dir, name: &OsStr) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(name))
    }

    /// Retries briefly while another program holds the destination (see
    /// [`crate::platform::rename_replacing`]).
    pub fn rename(dir: &Dir, from: &OsStr, to: &OsStr) -> io::Result<()> {
        crate::platform::rename_replacing(&dir.join(from), &dir.join(to))
    }

    pub fn remove_file(dir: &Dir, name: &OsStr) -> io::Result<()> {
        fs::remove_file(dir.join(name))
    }

    /// NTFS journals renames and creations; a directory cannot be opened for fsync.
    pub fn sync_dir(_dir: &Dir) -> io::Result<()> {
        Ok(())
    }
}
