//! Read-ahead of an object directory's files, so the disk is busy while the caller does
//! something else first (`health` parses the object's manifest, which on a pack of 10,000
//! files takes longer than reading 100 MB).
//!
//! Only a hint to the kernel (`posix_fadvise(WILLNEED)`): nothing is returned, errors are
//! ignored, and the bytes are verified later by whoever reads them. The directory is
//! untrusted like any object directory ([`crate::local`]): every component is opened
//! relative to its parent without following a link, and only regular files are hinted
//! (a FIFO or device is opened non-blocking and skipped).
//!
//! Order: the files of a directory before its subdirectories (an object's manifests before
//! its shards), names in natural order (`segment_2` before `segment_10`), so the budget is
//! spent on what a scrub reads first. Linux only; elsewhere [`prefetch_tree`] does nothing.

use std::path::Path;
use std::thread;

/// Hint the kernel to read the files below `top`, in the order described in the module
/// documentation, until `budget` bytes are asked for. Returns how many bytes were hinted.
#[cfg(target_os = "linux")]
pub fn prefetch_tree(top: &Path, budget: u64) -> u64 {
    let Ok(dir) = crate::local::sys::open_root(top) else {
        return 0;
    };
    let mut left = budget;
    walk(&dir, &mut left, 0);
    budget - left
}

/// Does nothing: there is no read-ahead hint to give here.
#[cfg(not(target_os = "linux"))]
pub fn prefetch_tree(_top: &Path, _budget: u64) -> u64 {
    0
}

/// [`prefetch_tree`] on a thread of its own: returns at once.
pub fn prefetch_in_background(top: &Path, budget: u64) {
    let top = top.to_path_buf();
    // A thread that cannot be started only loses the hint.
    let _ = thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || prefetch_tree(&top, budget));
}

/// Deeper than any object layout: a hostile tree does not make the walk recurse forever.
#[cfg(target_os = "linux")]
const MAX_DEPTH: usize = 8;

#[cfg(target_os = "linux")]
fn walk(dir: &crate::local::sys::Dir, left: &mut u64, depth: usize) {
    use rustix::fs::{Dir, FileType};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use crate::local::sys;
    use crate::platform::will_need;

    let Ok(entries) = Dir::read_from(dir) else {
        return;
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in entries.flatten() {
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
        if name == "." || name == ".." {
            continue;
        }
        match entry.file_type() {
            FileType::Directory => dirs.push(name),
            // Unknown: some file systems do not say; the open below decides.
            FileType::RegularFile | FileType::Unknown => files.push(name),
            _ => {}
        }
    }
    files.sort_by_cached_key(|n| natural_key(n.as_bytes()));
    dirs.sort_by_cached_key(|n| natural_key(n.as_bytes()));
    for name in files {
        if *left == 0 {
            return;
        }
        // open_file refuses links, FIFOs and anything but a regular file.
        if let Ok(file) = sys::open_file(dir, &name) {
            let len = file.metadata().map_or(0, |m| m.len()).min(*left);
            will_need(&file, len);
            *left -= len;
        }
    }
    if depth < MAX_DEPTH {
        for name in dirs {
            if *left == 0 {
                return;
            }
            if let Ok(sub) = sys::open_subdir(dir, &name) {
                walk(&sub, left, depth + 1);
            }
        }
    }
}

/// A name cut into runs of digits (compared as numbers) and of other bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn natural_key(name: &[u8]) -> Vec<(Vec<u8>, u128)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let text = rest.iter().take_while(|b| !b.is_ascii_digit()).count();
        let digits = rest[text..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        // Up to 38 digits fit; a longer run compares by its first 38.
        let number = rest[text..text + digits.min(38)]
            .iter()
            .fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
        key.push((rest[..text].to_vec(), number));
        rest = &rest[text + digits..];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::natural_key;

    /// Every regular file counts once, links (to files or directories) and FIFOs are not
    /// followed, and the budget caps what is asked for.
    #[cfg(target_os = "linux")]
    #[test]
    fn prefetch_hints_regular_files_only_within_the_budget() {
        use super::prefetch_tree;
        use std::fs;
        use std::os::unix::fs::symlink;

        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("big.dat"), vec![7u8; 50_000]).unwrap();
        let top = tmp.path().join("obj");
        let segs = top.join("blocks/block_0/segments");
        fs::create_dir_all(&segs).unwrap();
        fs::write(top.join("manifest.json"), vec![1u8; 100]).unwrap();
        for name in ["segment_0.dat", "segment_2.dat", "segment_10.dat"] {
            fs::write(segs.join(name), vec![2u8; 1000]).unwrap();
        }
        symlink(outside.join("big.dat"), segs.join("segment_3.dat")).unwrap();
        symlink(&outside, top.join("blocks/block_1")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            segs.join("segment_4.dat"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();

        assert_eq!(prefetch_tree(&top, u64::MAX), 3100);
        assert_eq!(prefetch_tree(&top, 1500), 1500);
        assert_eq!(prefetch_tree(&top, 0), 0);
        // The top itself may be reached through a link (the caller named it).
        symlink(&top, tmp.path().join("via-link")).unwrap();
        assert_eq!(prefetch_tree(&tmp.path().join("via-link"), u64::MAX), 3100);
        assert_eq!(prefetch_tree(&tmp.path().join("missing"), u64::MAX), 0);
    }

    #[test]
    fn natural_order_puts_numbers_in_numeric_order() {
        let mut names = [
            "segment_10.dat",
            "segment_2.dat",
            "parity_0.dat",
            "segment_1.dat",
        ];
        names.sort_by_key(|n| natural_key(n.as_bytes()));
        assert_eq!(
            names,
            [
                "parity_0.dat",
                "segment_1.dat",
                "segment_2.dat",
                "segment_10.dat"
            ]
        );
        // A run of digits longer than u128 holds does not overflow.
        let long = "9".repeat(60);
        assert!(natural_key(long.as_bytes())[0].1 > 0);
    }
}
