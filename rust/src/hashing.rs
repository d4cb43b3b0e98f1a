//! BLAKE3 chunk hashes and the Merkle tree over them.
//!
//! A shard is cut into fixed-size chunks (the last one may be short); each chunk's hash is
//! the plain BLAKE3 hash of its bytes. The Merkle root of an object is built over all chunk
//! hashes of all shards in layout order: leaves are the chunk hashes themselves, an inner
//! node is `BLAKE3(0x01 || left || right)`, and an odd node at the end of a level is carried
//! up unchanged. See FORMAT.md.

/// A BLAKE3 digest.
pub type Hash = [u8; 32];

/// Hash of one chunk.
pub fn chunk_hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Hashes of the consecutive `chunk_size` chunks of `data` (the last may be short).
pub fn chunk_hashes(data: &[u8], chunk_size: usize) -> Vec<Hash> {
    data.chunks(chunk_size).map(chunk_hash).collect()
}

/// Number of chunks covering `len` bytes.
pub fn chunk_count(len: u64, chunk_size: u64) -> u64 {
    len.div_ceil(chunk_size)
}

/// Merkle root over `leaves`; the root of no leaves is the hash of the empty string.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return chunk_hash(&[]);
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [left, right] => {
                    let mut h = blake3::Hasher::new();
                    h.update(&[1u8]);
                    h.update(left);
                    h.update(right);
                    next.push(*h.finalize().as_bytes());
                }
                [single] => next.push(*single),
                _ => unreachable!("chunks(2) yields one or two items"),
            }
        }
        level = next;
    }
    level[0]
}

/// Split a concatenation of 32-byte digests into hashes.
pub fn split_hashes(raw: &[u8]) -> Option<Vec<Hash>> {
    if raw.len() % 32 != 0 {
        return None;
    }
    Some(
        raw.chunks_exact(32)
            .map(|c| c.try_into().expect("chunks_exact(32)"))
            .collect(),
    )
}

/// BLAKE3 hash of a whole file, read sequentially in 1 MiB pieces (memory independent of
/// the file size).
pub fn hash_file(path: &std::path::Path) -> crate::Result<Hash> {
    use crate::error::IoContext;
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).at(path)?;
    hash_into(&mut hasher, file, path)?;
    Ok(*hasher.finalize().as_bytes())
}

/// BLAKE3 hash of the concatenation of `paths` (a pack's member files), read the same way;
/// each must be a regular file, opened without following a link or waiting on a FIFO.
pub fn hash_files<P: AsRef<std::path::Path>>(paths: &[P]) -> crate::Result<Hash> {
    use crate::error::IoContext;
    let mut hasher = blake3::Hasher::new();
    for path in paths {
        let path = path.as_ref();
        let (file, _) = crate::platform::open_regular(path)
            .at(path)?
            .ok_or_else(|| std::io::Error::other("not a regular file"))
            .at(path)?;
        hash_into(&mut hasher, file, path)?;
    }
    Ok(*hasher.finalize().as_bytes())
}

fn hash_into(
    hasher: &mut blake3::Hasher,
    mut file: std::fs::File,
    path: &std::path::Path,
) -> crate::Result<()> {
    use crate::error::IoContext;
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}
