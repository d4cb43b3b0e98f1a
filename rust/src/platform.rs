//! The few file operations whose form differs between operating systems. Everything else
//! in the core is plain `std`; anything OS-specific goes here, behind `cfg`, so that the
//! core builds and behaves the same on Linux, macOS and Windows.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;
use std::time::SystemTime;

/// Read up to `buf.len()` bytes of `file` at `offset`; `Ok(0)` at or past the end.
///
/// Unix: `pread`, which leaves the file cursor alone. Windows: `ReadFile` with an explicit
/// offset (`seek_read`), which also moves the handle's cursor to the end of what it read.
/// Every caller passes its own offset and none uses the cursor, so concurrent positional
/// reads from several threads on one shared handle stay correct on Windows too: each call
/// reads exactly the range it names, and only the (unused) cursor position is racy.
#[cfg(unix)]
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buf, offset)
}

/// See the Unix version.
#[cfg(windows)]
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    file.seek_read(buf, offset)
}

/// Fill `buf` from `file` at `offset` (see [`read_at`]); `UnexpectedEof` if the file ends
/// first. Interrupted reads are retried.
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended before the requested range",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Make the entries of directory `dir` (files created or renamed into it) durable.
///
/// Unix: fsync the directory itself, which POSIX requires for a new or renamed entry to
/// survive a crash.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Make the entries of directory `dir` durable: a no-op on Windows.
///
/// NTFS (and ReFS) journal metadata: creating or renaming a directory entry is a logged
/// transaction, so after a crash it is either wholly there or wholly absent. The journal
/// reaches the disk moments later, so a crash right after a commit may undo the commit but
/// cannot leave it half done; and since file contents are synced (`sync_all`, that is
/// `FlushFileBuffers`) before anything is renamed into place, a name that survives always
/// points at complete data. Windows has no directory fsync to ask for more:
/// `File::open` on a directory fails ("Access denied", os error 5) because it needs
/// `FILE_FLAG_BACKUP_SEMANTICS`, and `FlushFileBuffers` is documented for files and
/// volumes only.
#[cfg(windows)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // Still fail for a path that does not exist, as the Unix version does.
    std::fs::metadata(dir).map(drop)
}

/// Rename `from` to `to`, replacing `to` if it exists.
///
/// std renames with POSIX semantics where the file system supports them (NTFS on Windows
/// 10 1607 and later): a destination that others hold open (opened with
/// `FILE_SHARE_DELETE`, as std and Python open files) is replaced as on Unix, and they keep
/// reading the old file. Without them (FAT, exFAT, some network shares, Wine) an open
/// destination makes the rename fail with "Access denied" until it is closed, and a
/// sharing violation comes from programs that open files without `FILE_SHARE_DELETE`
/// (antivirus and indexers scanning the file just written). Such holds are usually brief,
/// so retry for about a second before reporting the error.
#[cfg(windows)]
pub fn rename_replacing(from: &Path, to: &Path) -> io::Result<()> {
    use std::time::{Duration, Instant};
    const ERROR_SHARING_VIOLATION: i32 = 32;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::rename(from, to) {
            Err(e)
                if (e.kind() == io::ErrorKind::PermissionDenied
                    || e.raw_os_error() == Some(ERROR_SHARING_VIOLATION))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Ask the OS to start writing `[offset, offset + len)` of `file` to disk now rather than
/// when its dirty-page limit is reached, so the disk streams while the caller computes and
/// a later `sync_all` only waits for the tail. Only a hint: errors are ignored, because the
/// `sync_all` that follows does the real work and reports real failures.
///
/// Linux only (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); elsewhere there is no cheap
/// equivalent and it does nothing.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the fd is valid for as
    // long as `file` is borrowed. Its result is deliberately ignored (see above).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Ask the OS to start reading the first `len` bytes of `file` into its cache now, without
/// waiting for them (a later read finds them there or in flight). Only a hint: errors are
/// ignored.
///
/// Linux only (`posix_fadvise(POSIX_FADV_WILLNEED)`); elsewhere it does nothing.
#[cfg(target_os = "linux")]
pub fn will_need(file: &File, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is valid for as long
    // as `file` is borrowed. Its result is deliberately ignored: this is only a hint.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            len.min(i64::MAX as u64) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// See the Linux version: a no-op here.
#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// What tells whether an open file changed between two moments: its length and its
/// modification time, to the resolution the OS keeps (nanoseconds on Linux and macOS,
/// 100 ns on Windows). On Linux this is exactly `st_size`, `st_mtime` and `st_mtime_nsec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of an open file.
    pub fn of(file: &File) -> io::Result<Self> {
        Ok(Self::from_metadata(&file.metadata()?))
    }

    /// The stamp described by `md`.
    pub fn from_metadata(md: &Metadata) -> Self {
        Self {
            len: md.len(),
            // Every platform the core builds for records it; `None` would only compare
            // equal to another `None` from the same file, leaving the length check.
            modified: md.modified().ok(),
        }
    }
}

/// Which file an open handle is, and its [`FileStamp`]: two opens of one path that give
/// different identities did not open the same, unchanged file.
///
/// Unix: device and inode number. Windows: the creation time (std has no stable access to
/// the volume serial number and file index), so a file replaced by another of the same
/// length, modification and creation time goes unnoticed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub stamp: FileStamp,
    id: (u64, u64),
}

impl FileIdentity {
    /// The identity of an open file.
    pub fn of(file: &File) -> io::Result<Self> {
        Ok(Self::from_metadata(&file.metadata()?))
    }

    /// The identity described by `md` (the metadata of an open handle).
    #[cfg(unix)]
    pub fn from_metadata(md: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            stamp: FileStamp::from_metadata(md),
            id: (md.dev(), md.ino()),
        }
    }

    /// See the Unix version.
    #[cfg(windows)]
    pub fn from_metadata(md: &Metadata) -> Self {
        use std::os::windows::fs::MetadataExt;
        Self {
            stamp: FileStamp::from_metadata(md),
            id: (md.creation_time(), 0),
        }
    }
}

/// Open `path` for reading if it is a regular file, without following a symbolic link in
/// its last component and without waiting on a FIFO or device: `Ok(None)` when it is a
/// link or anything but a regular file. Also returns the file's metadata, taken from the
/// open handle.
///
/// Unix: `O_NOFOLLOW | O_NONBLOCK` (a FIFO opens at once and is then refused; the flag has
/// no effect on reads of a regular file), then `fstat`.
#[cfg(unix)]
pub fn open_regular(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    use rustix::fs::{self as rfs, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rfs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        // What O_NOFOLLOW gives for a link (FreeBSD says EMLINK).
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::MLINK) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let md = file.metadata()?;
    Ok(md.is_file().then_some((file, md)))
}

/// See the Unix version. Windows: `FILE_FLAG_OPEN_REPARSE_POINT` opens a symbolic link
/// (or junction, or any other reparse point) itself instead of its target, and the handle
/// is refused unless it is a plain file. (A named pipe lives under `\\.\pipe\`, never
/// at a path of a file system, so nothing can block the open.)
#[cfg(windows)]
pub fn open_regular(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
    const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
    const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
    {
        Ok(file) => file,
        // A directory cannot be opened this way ("Access denied"): not a file either.
        Err(_) if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) => return Ok(None),
        Err(e) => return Err(e),
    };
    let md = file.metadata()?;
    let plain = md.is_file()
        && !md.file_type().is_symlink()
        && md.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT == 0;
    Ok(plain.then_some((file, md)))
}
