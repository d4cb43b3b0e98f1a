//! A bounded, shared cache of verified chunks.
//!
//! Holds only bytes that matched their manifest hash (or were rebuilt and then matched), so
//! serving from it never returns unverified bytes. Least recently used entries are dropped
//! to stay within the byte budget.
//!
//! An entry is keyed by the chunk's own BLAKE3 hash, i.e. by its content: objects are
//! write-once, so the key stays valid across readers, reopenings of the same object and
//! objects that share chunks, and one cache serves every object of a mount. Equal keys mean
//! equal bytes (and equal lengths), so a hit is the right answer wherever the chunk is
//! wanted: a data chunk and a parity chunk, or chunks of two objects, that hash alike are
//! the same bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::hashing::Hash;

/// The BLAKE3 hash of the chunk's bytes, as recorded in the manifest.
pub type Key = Hash;

struct Inner {
    map: LruCache<Key, Arc<[u8]>>,
    bytes: usize,
}

/// A thread-safe LRU of verified chunk bytes with a byte budget.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChunkCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters (entries are immutable), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Arc<[u8]>> {
        let found = self.lock().map.get(key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.lock().map.contains(key)
    }

    /// Insert verified bytes (`key` must be their hash), evicting the least recently used entries beyond the budget.
    pub fn insert(&self, key: Key, data: &[u8]) {
        if data.len() > self.max_bytes {
            return;
        }
        let value: Arc<[u8]> = Arc::from(data);
        let mut inner = self.lock();
        if let Some(old) = inner.map.put(key, value) {
            inner.bytes -= old.len();
        }
        inner.bytes += data.len();
        while inner.bytes > self.max_bytes {
            match inner.map.pop_lru() {
                Some((_, v)) => inner.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// (entries, bytes held, byte budget, hits, misses)
    pub fn stats(&self) -> (usize, usize, usize, u64, u64) {
        let inner = self.lock();
        (
            inner.map.len(),
            inner.bytes,
            self.max_bytes,
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
