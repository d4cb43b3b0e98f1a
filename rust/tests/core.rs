//! Integration tests of the BlockFrame core: the Reed-Solomon codec (round trips, sub-range
//! equivalence, golden parity hashes that freeze the format), the Merkle construction, the
//! commit pipeline and the verified reader (reads, damage detection, repair).
//!
//! Every check compares exact bytes. Sizes are small so that the suite runs in debug mode.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use blockframe_core::codec;
use blockframe_core::commit::{self, CommitOutput, PlanParity, PlanShard, PlanStripe, Progress};
use blockframe_core::hashing::{self, Hash};
use blockframe_core::layout::{ObjectSpec, ShardSpec, StripeSpec};
use blockframe_core::local::LocalFiles;
use blockframe_core::reader::{BadShard, Damage, Reader};
use blockframe_core::Error;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A tiny deterministic PRNG (xorshift64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn blake3_hex(data: &[u8]) -> String {
    hex(&hashing::chunk_hash(data))
}

/// Encode `k` equal-length data shards, returning `m` parity shards.
fn encode(data: &[Vec<u8>], m: usize) -> Vec<Vec<u8>> {
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut parity = vec![Vec::new(); m];
    codec::encode(&slices, &mut parity).expect("encode");
    assert_eq!(parity.len(), m);
    for p in &parity {
        assert_eq!(p.len(), data[0].len(), "parity has the data shard length");
    }
    parity
}

/// Reconstruct with the shards in `erased` (indices into data ++ parity) missing.
fn reconstruct_without(
    data: &[Vec<u8>],
    parity: &[Vec<u8>],
    erased: &[usize],
) -> blockframe_core::Result<Vec<Vec<u8>>> {
    let shards: Vec<Option<&[u8]>> = data
        .iter()
        .chain(parity)
        .enumerate()
        .map(|(i, s)| (!erased.contains(&i)).then_some(s.as_slice()))
        .collect();
    codec::reconstruct(data.len(), &shards)
}

/// Every subset of `0..n` with 1..=max elements (n small).
fn all_subsets(n: usize, max: usize) -> Vec<Vec<usize>> {
    assert!(n <= 16);
    (1u32..1 << n)
        .filter(|mask| mask.count_ones() as usize <= max)
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
        .collect()
}

/// A sample of subsets of `0..n` with 1..=max elements: structured edge cases plus random
/// ones (for geometries too wide to enumerate).
fn sampled_subsets(
    n: usize,
    k: usize,
    max: usize,
    rng: &mut Rng,
    per_size: usize,
) -> Vec<Vec<usize>> {
    let mut out = BTreeSet::new();
    for e in 1..=max {
        out.insert((0..e).collect::<Vec<_>>()); // first data shards
        out.insert((k - e.min(k)..k).collect::<Vec<_>>()); // last data shards
        out.insert((k..k + e).collect::<Vec<_>>()); // parity only
        out.insert((n - e..n).collect::<Vec<_>>()); // last shards (parity)
        let mut mixed: Vec<usize> = (0..e - 1).collect(); // data + last parity
        mixed.push(n - 1);
        out.insert(mixed);
        for _ in 0..per_size {
            let mut set = BTreeSet::new();
            while set.len() < e {
                set.insert(rng.below(n as u64) as usize);
            }
            out.insert(set.into_iter().collect());
        }
    }
    out.into_iter().collect()
}

/// Data shards filled with the golden pattern: byte `i` of the concatenation is
/// `(i * 31 + 7) mod 251`.
fn golden_data(k: usize, len: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|s| {
            (0..len)
                .map(|j| (((s * len + j) as u64 * 31 + 7) % 251) as u8)
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Codec round trips
// ---------------------------------------------------------------------------------------

#[test]
fn codec_round_trip_every_erasure_pattern() {
    let mut rng = Rng::new(1);
    let mut checked = 0usize;
    for &k in &[1usize, 2, 3, 5, 30] {
        for &m in &[1usize, 2, 3, 4] {
            let n = k + m;
            // (shard length, every erasure pattern?) Decoding has a fixed cost per call that
            // dominates small shards in debug builds, so every pattern is tried at two
            // lengths and a sample at the others.
            for (len, exhaustive) in [(64, true), (128, false), (4096, true), (65536 + 64, false)] {
                let data: Vec<Vec<u8>> = (0..k).map(|_| rng.bytes(len)).collect();
                let parity = encode(&data, m);
                let mut patterns = if n <= 16 {
                    all_subsets(n, m)
                } else {
                    sampled_subsets(n, k, m, &mut rng, if exhaustive { 4 } else { 1 })
                };
                if !exhaustive {
                    // Keep the largest erasures, then a random sample of the rest.
                    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
                    let keep = 3.min(patterns.len());
                    let mut rest = patterns.split_off(keep);
                    for _ in 0..3.min(rest.len()) {
                        let i = rng.below(rest.len() as u64) as usize;
                        patterns.push(rest.swap_remove(i));
                    }
                }
                // No erasure at all.
                let out = reconstruct_without(&data, &parity, &[]).unwrap();
                assert_eq!(out, data, "k={k} m={m} len={len} nothing erased");
                for erased in &patterns {
                    let out = reconstruct_without(&data, &parity, erased)
                        .unwrap_or_else(|e| panic!("k={k} m={m} len={len} {erased:?}: {e}"));
                    assert!(
                        out == data,
                        "k={k} m={m} len={len} erased {erased:?}: wrong bytes"
                    );
                    checked += 1;
                }
                // One erasure too many is refused, never guessed.
                let too_many: Vec<usize> = (0..=m).collect();
                assert!(reconstruct_without(&data, &parity, &too_many).is_err());
            }
        }
    }
    assert!(checked > 1700, "only {checked} patterns checked");
}

#[test]
fn codec_rejects_bad_geometry() {
    let data = vec![vec![1u8; 64]; 3];
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    // No parity.
    assert!(matches!(
        codec::encode(&slices, &mut []),
        Err(Error::Layout(_))
    ));
    // No data.
    let mut parity = vec![Vec::new(); 2];
    assert!(matches!(
        codec::encode(&[], &mut parity),
        Err(Error::Layout(_))
    ));
    // Unequal lengths.
    let uneven = [&data[0][..], &data[1][..], &data[2][..0]];
    assert!(codec::encode(&uneven, &mut parity).is_err());
    // Reconstruct with unequal slices.
    let parity = encode(&data, 2);
    let shards: Vec<Option<&[u8]>> = vec![
        None,
        Some(&data[1]),
        Some(&data[2][..0]),
        Some(&parity[0]),
        Some(&parity[1]),
    ];
    assert!(codec::reconstruct(3, &shards).is_err());
}

// ---------------------------------------------------------------------------------------
// 2. Sub-range equivalence
// ---------------------------------------------------------------------------------------

fn check_subrange(
    k: usize,
    m: usize,
    len: usize,
    ranges: &[(usize, usize)],
    erasures: &[Vec<usize>],
) {
    let mut rng = Rng::new((k * 100 + m) as u64);
    let data: Vec<Vec<u8>> = (0..k).map(|_| rng.bytes(len)).collect();
    let parity = encode(&data, m);
    for &(a, b) in ranges {
        let sub: Vec<Vec<u8>> = data.iter().map(|d| d[a..b].to_vec()).collect();
        let sub_parity = encode(&sub, m);
        for (j, p) in sub_parity.iter().enumerate() {
            assert!(
                p[..] == parity[j][a..b],
                "k={k} m={m}: parity {j} of range {a}..{b} differs from the whole-shard parity"
            );
        }
        for erased in erasures {
            let sub_all: Vec<Option<&[u8]>> = data
                .iter()
                .chain(&parity)
                .enumerate()
                .map(|(i, s)| (!erased.contains(&i)).then_some(&s[a..b]))
                .collect();
            let rebuilt = codec::reconstruct(k, &sub_all).unwrap();
            let whole = reconstruct_without(&data, &parity, erased).unwrap();
            for i in 0..k {
                assert!(
                    rebuilt[i][..] == whole[i][a..b] && rebuilt[i] == sub[i],
                    "k={k} m={m}: range {a}..{b} erased {erased:?}: shard {i} differs"
                );
            }
        }
    }
}

#[test]
fn codec_subrange_equals_slice_of_whole() {
    // Small geometry: every aligned range of a 1 KiB shard.
    let len = 1024;
    let mut ranges = Vec::new();
    for a in (0..len).step_by(64) {
        for b in (a + 64..=len).step_by(64) {
            ranges.push((a, b));
        }
    }
    assert_eq!(ranges.len(), 136);
    check_subrange(
        3,
        2,
        len,
        &ranges,
        &[vec![0], vec![1, 4], vec![0, 2], vec![3, 4]],
    );

    // The production geometry 30+3: sampled aligned ranges, including head and tail.
    let len = 8192;
    let mut rng = Rng::new(7);
    let mut ranges = vec![(0, 64), (len - 64, len), (0, len), (64, len - 64)];
    for _ in 0..12 {
        let a = rng.below((len / 64) as u64) as usize * 64;
        let b = a + 64 * (1 + rng.below(((len - a) / 64) as u64) as usize);
        ranges.push((a, b));
    }
    check_subrange(
        30,
        3,
        len,
        &ranges,
        &[vec![0, 15, 29], vec![3, 30, 32], vec![29]],
    );
}

#[test]
fn codec_rejects_unaligned_lengths() {
    for len in [0usize, 1, 2, 32, 63, 65, 100, 4095, 4097] {
        let data = vec![vec![9u8; len]; 3];
        let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parity = vec![Vec::new(); 2];
        let r = codec::encode(&slices, &mut parity);
        assert!(
            matches!(r, Err(Error::Layout(_))),
            "encode len {len}: {r:?}"
        );
        let shards: Vec<Option<&[u8]>> =
            vec![None, Some(&data[1]), Some(&data[2]), Some(&data[0]), None];
        let r = codec::reconstruct(3, &shards);
        assert!(
            matches!(r, Err(Error::Layout(_))),
            "reconstruct len {len}: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. Golden values that freeze the format
// ---------------------------------------------------------------------------------------

#[test]
fn golden_blake3() {
    // Published BLAKE3 test values: the chunk hash is plain, unkeyed BLAKE3.
    assert_eq!(
        blake3_hex(b""),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
    assert_eq!(
        blake3_hex(b"abc"),
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    );
}

#[test]
fn golden_parity() {
    // (k, m, shard length, BLAKE3 of each parity shard)
    let cases: &[(usize, usize, usize, &[&str])] = &[
        (
            1,
            3,
            4096,
            &[
                "875d98e0b46fdc69dcd1c375119e658424a15a375f2dfb12a5fbccf18192f02c",
                "875d98e0b46fdc69dcd1c375119e658424a15a375f2dfb12a5fbccf18192f02c",
                "875d98e0b46fdc69dcd1c375119e658424a15a375f2dfb12a5fbccf18192f02c",
            ],
        ),
        (
            3,
            2,
            192,
            &[
                "dee7e9b5b33bd92d550395d33041dd473fdff719d67ebe5daba15eaf0b96ce46",
                "af646f05953a79804f336ffbb59886886854bfb83af6a9ad375fdffa399b895b",
            ],
        ),
        (
            30,
            3,
            65536,
            &[
                "7f867ddbc3b7424d332dcee83df3e89b6a1d6b8b5b20fbca1de079ed9128b2f8",
                "43bd2ccce04014dd66b0dac61b5590ac8fa749ac866af0ce7aca5977d05a234d",
                "acec6c2bd59d56066e001de28d4b7213319a1f9a6ce559fa9e4b934dd0813cf3",
            ],
        ),
    ];
    for &(k, m, len, want) in cases {
        let data = golden_data(k, len);
        let parity = encode(&data, m);
        let got: Vec<String> = parity.iter().map(|p| blake3_hex(p)).collect();
        assert_eq!(
            got, want,
            "parity of the {k}+{m} golden stripe changed: the format is frozen"
        );
        if k == 1 {
            // With one data shard every parity shard is a copy of it (a repetition code);
            // the golden hashes above say so too.
            assert!(parity.iter().all(|p| *p == data[0]));
        }
        // The golden parity decodes back to the golden data.
        let erased: Vec<usize> = (0..m.min(k)).collect();
        assert_eq!(reconstruct_without(&data, &parity, &erased).unwrap(), data);
    }
}

fn leaf(i: usize) -> Hash {
    hashing::chunk_hash(format!("leaf {i}").as_bytes())
}

/// Inner node, computed here independently: BLAKE3(0x01 || left || right).
fn node(l: &Hash, r: &Hash) -> Hash {
    let mut buf = vec![0x01u8];
    buf.extend_from_slice(l);
    buf.extend_from_slice(r);
    hashing::chunk_hash(&buf)
}

#[test]
fn golden_merkle_root() {
    let l: Vec<Hash> = (0..5).map(leaf).collect();
    // The root of nothing is BLAKE3 of the empty string.
    assert_eq!(hashing::merkle_root(&[]), hashing::chunk_hash(b""));
    // One leaf is its own root.
    assert_eq!(hashing::merkle_root(&l[..1]), l[0]);
    // Two leaves.
    assert_eq!(hashing::merkle_root(&l[..2]), node(&l[0], &l[1]));
    // Three: the odd last leaf is carried up unchanged, not hashed or duplicated.
    assert_eq!(
        hashing::merkle_root(&l[..3]),
        node(&node(&l[0], &l[1]), &l[2])
    );
    // Five: the fifth leaf is carried up twice.
    let n01 = node(&l[0], &l[1]);
    let n23 = node(&l[2], &l[3]);
    assert_eq!(
        hashing::merkle_root(&l[..5]),
        node(&node(&n01, &n23), &l[4])
    );
    // Order matters.
    assert_ne!(
        hashing::merkle_root(&[l[1], l[0]]),
        hashing::merkle_root(&l[..2])
    );

    // Frozen values.
    let want = [
        (
            1,
            "9c92ea8f50cd370650e0b20d375eaf0e44c707550fc81b539bf96a2355712bb0",
        ),
        (
            2,
            "47b354e110e7c1b3db1a2e8dda9b5870ff8ce1111cabe326a28175b3f3d0573e",
        ),
        (
            3,
            "9e43faf191f3f5f1e1354d507c0fbadac3b6ed012f9b938a816edfb6f96126ec",
        ),
        (
            5,
            "efe66f020109b5500ffaff9c5ec580cdabe2b1f208d13b019669f67412b7a140",
        ),
    ];
    for (n, hex_root) in want {
        let got = hex(&hashing::merkle_root(&l[..n]));
        assert_eq!(got, hex_root, "Merkle root of {n} leaves changed");
    }
}

#[test]
fn hashing_helpers() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let hs = hashing::chunk_hashes(&data, 256);
    assert_eq!(hs.len(), 4);
    assert_eq!(hs[0], hashing::chunk_hash(&data[..256]));
    assert_eq!(hs[3], hashing::chunk_hash(&data[768..]));
    assert_eq!(hashing::chunk_count(1000, 256), 4);
    assert_eq!(hashing::chunk_count(1024, 256), 4);
    assert_eq!(hashing::chunk_count(0, 256), 0);
    let raw: Vec<u8> = hs.iter().flatten().copied().collect();
    assert_eq!(hashing::split_hashes(&raw).unwrap(), hs);
    assert!(hashing::split_hashes(&raw[..33]).is_none());
}

// ---------------------------------------------------------------------------------------
// Commit + reader fixtures
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Geometry {
    k: usize,
    m: usize,
    /// Data shard (segment) length; the last shards of the file are shorter.
    seg: u64,
    chunk: u64,
}

/// Cut `size` bytes into stripes of `k` shards of `seg` bytes (tier-3 names); the last
/// stripe holds what is left, in as many shards as it needs.
fn make_plan(size: u64, g: Geometry) -> Vec<PlanStripe> {
    let mut plan = Vec::new();
    let mut offset = 0;
    while offset < size {
        let b = plan.len();
        let mut data = Vec::new();
        for i in 0..g.k {
            let len = g.seg.min(size - offset);
            if len == 0 {
                break;
            }
            data.push(PlanShard {
                root: 0,
                path: format!("blocks/block_{b}/segments/segment_{i}.dat").into(),
                len,
            });
            offset += len;
        }
        let parity = (0..g.m)
            .map(|j| PlanParity {
                root: 0,
                path: format!("blocks/block_{b}/parity/parity_{j}.dat").into(),
            })
            .collect();
        plan.push(PlanStripe { data, parity });
    }
    plan
}

/// The length parity is stored at: the longest data shard rounded up to 64 bytes,
/// computed here independently of the crate.
fn parity_len(stripe: &PlanStripe) -> u64 {
    let longest = stripe.data.iter().map(|d| d.len).max().unwrap();
    longest.div_ceil(64) * 64
}

/// How a layout names a shard: `(root index, planned path, length, hashes)` to its spec.
type Placer<'a> = &'a dyn Fn(usize, &Path, u64, Vec<Hash>) -> ShardSpec;

/// The layout of a committed plan, each shard named by `place`.
fn layout_of(
    plan: &[PlanStripe],
    out: &CommitOutput,
    chunk: u64,
    root: &Path,
    place: Placer<'_>,
) -> ObjectSpec {
    let stripes = plan
        .iter()
        .zip(&out.hashes)
        .map(|(st, hashes)| {
            let k = st.data.len();
            StripeSpec {
                data: st
                    .data
                    .iter()
                    .zip(&hashes[..k])
                    .map(|(d, h)| place(d.root, &d.path, d.len, h.clone()))
                    .collect(),
                parity: st
                    .parity
                    .iter()
                    .zip(&hashes[k..])
                    .map(|(p, h)| place(p.root, &p.path, parity_len(st), h.clone()))
                    .collect(),
            }
        })
        .collect();
    ObjectSpec::new(root, chunk, stripes).expect("a committed object is a valid layout")
}

struct Fixture {
    _dir: tempfile::TempDir,
    source: PathBuf,
    root: PathBuf,
    data: Vec<u8>,
    g: Geometry,
    plan: Vec<PlanStripe>,
    out: CommitOutput,
    done: u64,
}

impl Fixture {
    fn new(size: u64, g: Geometry, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        let data = Rng::new(seed).bytes(size as usize);
        fs::write(&source, &data).unwrap();
        let root = dir.path().join("object");
        let plan = make_plan(size, g);
        let progress = Progress::default();
        let out = commit::commit(&source, &root, g.chunk, &plan, &progress)
            .unwrap_or_else(|e| panic!("commit of {size} bytes with {g:?}: {e}"));
        let done = progress.done.load(Ordering::Relaxed);
        Self {
            _dir: dir,
            source,
            root,
            data,
            g,
            plan,
            out,
            done,
        }
    }

    fn spec(&self) -> ObjectSpec {
        layout_of(
            &self.plan,
            &self.out,
            self.g.chunk,
            &self.root,
            &|_, rel, len, hashes| ShardSpec::new(rel, len, hashes),
        )
    }

    fn reader(&self) -> Reader {
        Reader::new(self.spec())
    }

    /// Relative path of shard `s` (data first, then parity) of `stripe`.
    fn rel(&self, stripe: usize, s: usize) -> &Path {
        let st = &self.plan[stripe];
        if s < st.data.len() {
            &st.data[s].path
        } else {
            &st.parity[s - st.data.len()].path
        }
    }

    fn path(&self, stripe: usize, s: usize) -> PathBuf {
        self.root.join(self.rel(stripe, s))
    }

    fn shard_count(&self, stripe: usize) -> usize {
        self.plan[stripe].data.len() + self.plan[stripe].parity.len()
    }

    /// Recorded length of shard `s` of `stripe`.
    fn len(&self, stripe: usize, s: usize) -> u64 {
        let st = &self.plan[stripe];
        if s < st.data.len() {
            st.data[s].len
        } else {
            parity_len(st)
        }
    }

    /// File offset where data shard `s` of `stripe` starts.
    fn start(&self, stripe: usize, s: usize) -> u64 {
        let before: u64 = self.plan[..stripe]
            .iter()
            .flat_map(|st| &st.data)
            .map(|d| d.len)
            .sum();
        before
            + self.plan[stripe].data[..s]
                .iter()
                .map(|d| d.len)
                .sum::<u64>()
    }

    /// The bytes every shard file should hold: data shards are slices of the source,
    /// parity is computed here by encoding the zero-padded data shards whole.
    fn expected_shards(&self) -> Vec<Vec<Vec<u8>>> {
        let mut offset = 0usize;
        self.plan
            .iter()
            .map(|st| {
                let padded = parity_len(st) as usize;
                let mut shards: Vec<Vec<u8>> = st
                    .data
                    .iter()
                    .map(|d| {
                        let bytes = self.data[offset..offset + d.len as usize].to_vec();
                        offset += d.len as usize;
                        bytes
                    })
                    .collect();
                let padded_data: Vec<Vec<u8>> = shards
                    .iter()
                    .map(|d| {
                        let mut p = d.clone();
                        p.resize(padded, 0);
                        p
                    })
                    .collect();
                shards.extend(encode(&padded_data, st.parity.len()));
                shards
            })
            .collect()
    }
}

/// Every file under `dir`, relative to it.
fn list_files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Read `[offset, offset + len)` through the reader and compare with the source bytes.
fn read_ok(reader: &Reader, data: &[u8], offset: u64, len: usize) -> Vec<BadShard> {
    let mut buf = vec![0xA5u8; len];
    let mut bad = Vec::new();
    reader
        .read(offset, &mut buf, &mut bad)
        .unwrap_or_else(|e| panic!("read {offset}+{len}: {e}"));
    assert!(
        buf[..] == data[offset as usize..offset as usize + len],
        "read {offset}+{len} returned wrong bytes"
    );
    bad
}

/// Reads at every shard and stripe edge and at random offsets and sizes; returns every
/// bad shard reported.
fn check_reads(
    f: &Fixture,
    reader: &Reader,
    rng: &mut Rng,
    random: usize,
) -> BTreeSet<(usize, usize, u8)> {
    let size = f.data.len() as u64;
    let mut reported = BTreeSet::new();
    let mut note = |bad: Vec<BadShard>| {
        for b in bad {
            reported.insert((b.stripe, b.shard, b.damage as u8));
        }
    };
    note(read_ok(reader, &f.data, 0, size as usize));
    note(read_ok(reader, &f.data, 0, 1));
    note(read_ok(reader, &f.data, size - 1, 1));
    note(read_ok(reader, &f.data, size, 0));
    for (si, st) in f.plan.iter().enumerate() {
        for s in 0..st.data.len() {
            let start = f.start(si, s);
            for (back, len) in [
                (1u64, 2u64),
                (0, 1),
                (70, 140),
                (f.g.chunk, 2 * f.g.chunk + 1),
            ] {
                let a = start.saturating_sub(back);
                let len = len.min(size - a);
                note(read_ok(reader, &f.data, a, len as usize));
            }
        }
    }
    for _ in 0..random {
        let offset = rng.below(size);
        let room = size - offset;
        let len = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(room.min(64)),
            2 => 1 + rng.below(room.min(3 * f.g.chunk)),
            _ => 1 + rng.below(room),
        };
        note(read_ok(reader, &f.data, offset, len as usize));
    }
    reported
}

// ---------------------------------------------------------------------------------------
// 4. Commit pipeline and reader, end to end
// ---------------------------------------------------------------------------------------

fn check_commit_round_trip(size: u64, g: Geometry, seed: u64) {
    let f = Fixture::new(size, g, seed);
    let what = format!("{size} bytes, {g:?}");

    // The object id hash is BLAKE3 of the whole file.
    assert_eq!(f.out.content_hash, hashing::chunk_hash(&f.data), "{what}");
    assert_eq!(f.done, size, "{what}: progress counts every source byte");
    assert!(
        fs::read(&f.source).unwrap() == f.data,
        "{what}: the source is left as it was"
    );

    // Exactly the planned files exist, nothing else (no temporaries).
    let planned: BTreeSet<PathBuf> = (0..f.plan.len())
        .flat_map(|si| (0..f.shard_count(si)).map(move |s| (si, s)))
        .map(|(si, s)| f.rel(si, s).to_path_buf())
        .collect();
    assert_eq!(list_files(&f.root), planned, "{what}");

    // Shard bytes and chunk hashes.
    let expected = f.expected_shards();
    let mut concat = Vec::new();
    assert_eq!(f.out.hashes.len(), f.plan.len(), "{what}");
    for (si, st) in f.plan.iter().enumerate() {
        let k = st.data.len();
        assert_eq!(f.out.hashes[si].len(), f.shard_count(si), "{what}");
        assert_eq!(expected[si].len(), f.shard_count(si));
        for (s, want) in expected[si].iter().enumerate() {
            let bytes = fs::read(f.path(si, s)).unwrap();
            assert_eq!(
                bytes.len() as u64,
                f.len(si, s),
                "{what}: stripe {si} shard {s} length"
            );
            if s < k {
                concat.extend_from_slice(&bytes);
            } else {
                assert_eq!(bytes.len() % 64, 0, "{what}: parity is padded to 64 bytes");
            }
            assert!(bytes == *want, "{what}: stripe {si} shard {s} bytes");
            assert_eq!(
                f.out.hashes[si][s],
                hashing::chunk_hashes(&bytes, g.chunk as usize),
                "{what}: stripe {si} shard {s} chunk hashes"
            );
        }
    }
    assert!(
        concat == f.data,
        "{what}: data shards concatenated are the file"
    );

    // The layout built from the plan and the hashes.
    let spec = f.spec();
    assert_eq!(spec.size(), size, "{what}");
    let leaves: Vec<Hash> = f.out.hashes.iter().flatten().flatten().copied().collect();
    assert_eq!(
        spec.leaves(),
        leaves,
        "{what}: Merkle leaves in layout order"
    );
    for (si, st) in spec.stripes.iter().enumerate() {
        assert_eq!(st.padded_len(), parity_len(&f.plan[si]), "{what}");
        for s in 0..st.data.len() {
            let start = f.start(si, s);
            assert_eq!(spec.locate(start), (si, s, 0), "{what}");
            let end = start + st.data[s].len - 1;
            assert_eq!(spec.locate(end), (si, s, st.data[s].len - 1), "{what}");
        }
    }

    // Reads of every kind give the source bytes and report nothing.
    let reader = Reader::new(spec);
    let mut rng = Rng::new(seed ^ 0xABCD);
    let reported = check_reads(&f, &reader, &mut rng, 60);
    assert!(
        reported.is_empty(),
        "{what}: healthy object reported {reported:?}"
    );
    for si in 0..f.plan.len() {
        for s in 0..f.shard_count(si) {
            let check = reader.verify_shard(si, s).unwrap();
            assert!(
                check.is_ok() && check.bad_chunks.is_empty(),
                "{what}: {si}/{s} {check:?}"
            );
            let mut bad = Vec::new();
            assert_eq!(reader.repair_shard(si, s, &mut bad).unwrap(), 0, "{what}");
            assert!(bad.is_empty());
        }
    }
    // Reads past the end are refused.
    let mut buf = [0u8; 2];
    let err = reader
        .read(size - 1, &mut buf, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{what}: {err:?}");
}

#[test]
fn commit_and_read_tiny_files() {
    let g = Geometry {
        k: 3,
        m: 2,
        seg: 4096,
        chunk: 1024,
    };
    check_commit_round_trip(1, g, 1);
    check_commit_round_trip(63, g, 2);
    check_commit_round_trip(65, g, 3);
    // One-byte last stripe, k=1.
    check_commit_round_trip(
        65,
        Geometry {
            k: 1,
            m: 1,
            seg: 64,
            chunk: 64,
        },
        4,
    );
    // chunk * 3 + 17: four 1+3 stripes, the last 17 bytes.
    check_commit_round_trip(
        256 * 3 + 17,
        Geometry {
            k: 1,
            m: 3,
            seg: 256,
            chunk: 256,
        },
        5,
    );
    // Shard lengths that are not multiples of 64 or of the chunk size.
    check_commit_round_trip(
        1000,
        Geometry {
            k: 2,
            m: 1,
            seg: 333,
            chunk: 128,
        },
        6,
    );
}

#[test]
fn commit_and_read_three_stripes_short_tail() {
    // 3+2 stripes of 3000-byte segments: [3000 x3] [3000 x3] [3000, 1234].
    let g = Geometry {
        k: 3,
        m: 2,
        seg: 3000,
        chunk: 1024,
    };
    check_commit_round_trip(3000 * 7 + 1234, g, 7);
}

#[test]
fn commit_and_read_wide_stripes() {
    // 30+3 with tiny segments: two full stripes and a third of 4 segments and 100 bytes.
    let g = Geometry {
        k: 30,
        m: 3,
        seg: 4096 * 3,
        chunk: 4096,
    };
    check_commit_round_trip(4096 * 3 * 64 + 100, g, 8);
}

#[test]
fn commit_and_read_shards_longer_than_a_window() {
    // Shards longer than the 1 MiB pipeline window: parity is encoded window by window
    // and must equal the whole-shard encoding (checked against `expected_shards`).
    // The chunk size is not a power of two, so the window (5 chunks) is not 1 MiB either.
    let g = Geometry {
        k: 2,
        m: 1,
        seg: (1 << 20) + 4096 + 5,
        chunk: 3 << 16,
    };
    check_commit_round_trip(g.seg + 1000, g, 9);
}

// ---------------------------------------------------------------------------------------
// 5. Damage: detection, reads through damage, repair, never making it worse
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Harm {
    /// Flip one bit at this offset.
    Flip(u64),
    /// Truncate to this length.
    Truncate(u64),
    Delete,
    ZeroFill,
    /// Append bytes past the recorded length.
    Append,
}

impl Harm {
    fn apply(self, path: &Path) {
        match self {
            Harm::Flip(at) => {
                let mut bytes = fs::read(path).unwrap();
                bytes[at as usize] ^= 0x10;
                fs::write(path, bytes).unwrap();
            }
            Harm::Truncate(len) => {
                let f = fs::OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len).unwrap();
            }
            Harm::Delete => fs::remove_file(path).unwrap(),
            Harm::ZeroFill => {
                let len = fs::metadata(path).unwrap().len();
                fs::write(path, vec![0u8; len as usize]).unwrap();
            }
            Harm::Append => {
                let mut bytes = fs::read(path).unwrap();
                bytes.extend_from_slice(b"trailing garbage");
                fs::write(path, bytes).unwrap();
            }
        }
    }

    /// What the reader must call it.
    fn damage(self) -> Damage {
        match self {
            Harm::Flip(_) | Harm::ZeroFill => Damage::Corrupt,
            Harm::Truncate(_) => Damage::Short,
            Harm::Delete => Damage::Missing,
            Harm::Append => Damage::Oversized,
        }
    }

    /// Chunks of a `len`-byte shard that no longer verify.
    fn bad_chunks(self, len: u64, chunk: u64) -> Vec<u64> {
        let n = len.div_ceil(chunk);
        match self {
            Harm::Flip(at) => vec![at / chunk],
            Harm::Truncate(to) => (to / chunk..n).collect(),
            Harm::Delete | Harm::ZeroFill => (0..n).collect(),
            Harm::Append => Vec::new(),
        }
    }
}

/// One of four kinds of harm for a shard of `len` bytes, by `pick`.
fn harm_for(pick: usize, len: u64) -> Harm {
    match pick % 4 {
        0 => Harm::Flip(len / 2 + 3),
        1 => Harm::Truncate(len / 2 - 10),
        2 => Harm::Delete,
        _ => Harm::ZeroFill,
    }
}

/// What tells a file apart from a rewritten or replaced one: its modification time and, on
/// Unix, its inode number (Windows has no stable std equivalent). Take it with [`pin`].
type Identity = (u64, SystemTime);

fn identity(path: &Path) -> Identity {
    let md = fs::metadata(path).unwrap();
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&md);
    #[cfg(not(unix))]
    let inode = 0;
    (inode, md.modified().unwrap())
}

/// Set the modification time of `path` far in the past and return its [`identity`]:
/// whatever the timestamp granularity, any later write or replacement of the file then
/// changes its modification time.
fn pin(path: &Path) -> Identity {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    file.set_modified(past).unwrap();
    drop(file);
    identity(path)
}

/// Every shard file of `stripe` holds exactly `originals`.
fn assert_stripe_restored(f: &Fixture, stripe: usize, originals: &[Vec<u8>]) {
    assert_eq!(originals.len(), f.shard_count(stripe));
    for (s, want) in originals.iter().enumerate() {
        let got = fs::read(f.path(stripe, s)).ok();
        assert!(
            got.as_ref() == Some(want),
            "stripe {stripe} shard {s} differs from the original"
        );
    }
}

/// No `.repair-` temporary is left anywhere under the object.
fn assert_no_temporaries(root: &Path) {
    let stray: Vec<PathBuf> = list_files(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".repair-"))
        .collect();
    assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
}

/// The 3+2 object the damage tests use: [1000 x3] [1000 x3] [1000, 1000, 500], chunks of
/// 256 bytes (data shards: 4 chunks, the last short; parity: 1024 bytes, 4 chunks).
fn damage_fixture(seed: u64) -> Fixture {
    Fixture::new(
        8500,
        Geometry {
            k: 3,
            m: 2,
            seg: 1000,
            chunk: 256,
        },
        seed,
    )
}

#[test]
fn damage_up_to_m_shards_is_read_through_and_repaired() {
    let f = damage_fixture(11);
    let originals = f.expected_shards();
    let reader = f.reader();
    let chunk = f.g.chunk;
    let mut rng = Rng::new(12);
    let mut scenario = 0usize;
    for stripe in [1usize, 2] {
        let n = f.shard_count(stripe);
        for damaged in all_subsets(n, f.g.m) {
            scenario += 1;
            let harms: Vec<(usize, Harm)> = damaged
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, harm_for(scenario + i, f.len(stripe, s))))
                .collect();
            let what = format!("stripe {stripe}, harm {harms:?}");
            let before: Vec<Vec<Identity>> = (0..f.plan.len())
                .map(|si| {
                    (0..f.shard_count(si))
                        .map(|s| pin(&f.path(si, s)))
                        .collect()
                })
                .collect();
            for &(s, harm) in &harms {
                harm.apply(&f.path(stripe, s));
            }

            // Reads return exact bytes; every damaged data shard is reported with the
            // right kind, and nothing healthy is reported.
            let reported = check_reads(&f, &reader, &mut rng, 8);
            for &(si, s, d) in &reported {
                let harm = harms.iter().find(|(hs, _)| si == stripe && *hs == s);
                let harm = harm.unwrap_or_else(|| panic!("{what}: healthy {si}/{s} reported"));
                assert_eq!(
                    d,
                    harm.1.damage() as u8,
                    "{what}: shard {s} reported as {d}"
                );
            }
            for &(s, harm) in &harms {
                if s < f.plan[stripe].data.len() {
                    assert!(
                        reported.contains(&(stripe, s, harm.damage() as u8)),
                        "{what}: damaged data shard {s} not reported: {reported:?}"
                    );
                }
            }

            // Whole-shard verification finds exactly the damage done.
            for si in 0..f.plan.len() {
                for s in 0..f.shard_count(si) {
                    let check = reader.verify_shard(si, s).unwrap();
                    match harms.iter().find(|(hs, _)| si == stripe && *hs == s) {
                        Some(&(_, harm)) => {
                            assert_eq!(check.damage, Some(harm.damage()), "{what}: shard {s}");
                            assert_eq!(
                                check.bad_chunks,
                                harm.bad_chunks(f.len(si, s), chunk),
                                "{what}: bad chunks of shard {s}"
                            );
                        }
                        None => assert!(
                            check.is_ok() && check.bad_chunks.is_empty(),
                            "{what}: {si}/{s}"
                        ),
                    }
                }
            }

            // Repair, data first in odd scenarios and parity first in even ones.
            let mut order = harms.clone();
            if scenario % 2 == 0 {
                order.reverse();
            }
            for &(s, harm) in &order {
                let mut bad = Vec::new();
                let rebuilt = reader
                    .repair_shard(stripe, s, &mut bad)
                    .unwrap_or_else(|e| panic!("{what}: repair of shard {s}: {e}"));
                let want = harm.bad_chunks(f.len(stripe, s), chunk).len() as u64;
                assert_eq!(rebuilt, want, "{what}: chunks rebuilt in shard {s}");
                assert!(bad.iter().all(|b| b.stripe == stripe), "{what}: {bad:?}");
                let bytes = fs::read(f.path(stripe, s)).unwrap();
                assert!(
                    bytes == originals[stripe][s],
                    "{what}: shard {s} not restored exactly"
                );
                // A second repair has nothing left to do.
                assert_eq!(reader.repair_shard(stripe, s, &mut Vec::new()).unwrap(), 0);
            }

            // Healthy shards were not touched; everything verifies; reads are clean.
            for si in 0..f.plan.len() {
                for s in 0..f.shard_count(si) {
                    let was_harmed = si == stripe && damaged.contains(&s);
                    if !was_harmed {
                        assert_eq!(
                            identity(&f.path(si, s)),
                            before[si][s],
                            "{what}: {si}/{s} rewritten"
                        );
                    }
                    assert!(
                        reader.verify_shard(si, s).unwrap().is_ok(),
                        "{what}: {si}/{s}"
                    );
                    assert!(fs::read(f.path(si, s)).unwrap() == originals[si][s]);
                }
            }
            assert_no_temporaries(&f.root);
            assert!(check_reads(&f, &reader, &mut rng, 4).is_empty(), "{what}");
        }
    }
    assert_eq!(scenario, 30);
}

#[test]
fn damage_reported_exactly() {
    // Data shard 0 and parity shard 0 of stripe 0 deleted: a read of data shard 0 must
    // rebuild from data 1, 2 and parity 1, reporting both missing shards.
    let f = damage_fixture(13);
    let reader = f.reader();
    Harm::Delete.apply(&f.path(0, 0));
    Harm::Delete.apply(&f.path(0, 3));
    let bad = read_ok(&reader, &f.data, 10, 100);
    assert_eq!(
        bad,
        vec![
            BadShard {
                stripe: 0,
                shard: 0,
                damage: Damage::Missing
            },
            BadShard {
                stripe: 0,
                shard: 3,
                damage: Damage::Missing
            },
        ]
    );
    // Reads of healthy shards of the same stripe need no parity and report nothing.
    assert!(read_ok(&reader, &f.data, 1000, 2000).is_empty());

    // A flipped bit in data shard 1 of stripe 2 is reported as corrupt, by a one-byte read
    // in its chunk, and the byte returned is the original.
    let at = 600; // chunk 2
    Harm::Flip(at).apply(&f.path(2, 1));
    let offset = f.start(2, 1) + at;
    let bad = read_ok(&reader, &f.data, offset, 1);
    assert_eq!(
        bad,
        vec![BadShard {
            stripe: 2,
            shard: 1,
            damage: Damage::Corrupt
        }]
    );
    // The other chunks of that shard still read without any report.
    assert!(read_ok(&reader, &f.data, f.start(2, 1), 512).is_empty());

    // A shard truncated in its third chunk: reads before the cut are clean, reads across
    // it report `Short`.
    Harm::Truncate(700).apply(&f.path(1, 2));
    assert!(read_ok(&reader, &f.data, f.start(1, 2), 512).is_empty());
    let bad = read_ok(&reader, &f.data, f.start(1, 2) + 500, 400);
    assert_eq!(
        bad,
        vec![BadShard {
            stripe: 1,
            shard: 2,
            damage: Damage::Short
        }]
    );
}

#[test]
fn verify_shard_reports_exact_chunks() {
    let f = damage_fixture(14);
    let reader = f.reader();
    // (stripe, shard, harm done, damage expected, bad chunks expected)
    type Case = (
        usize,
        usize,
        &'static [Harm],
        Option<Damage>,
        &'static [u64],
    );
    let cases: [Case; 8] = [
        (0, 0, &[], None, &[]),
        (
            0,
            1,
            &[Harm::Flip(0), Harm::Flip(999)],
            Some(Damage::Corrupt),
            &[0, 3],
        ),
        (0, 2, &[Harm::Truncate(512)], Some(Damage::Short), &[2, 3]),
        (
            2,
            3,
            &[Harm::Truncate(300)],
            Some(Damage::Short),
            &[1, 2, 3],
        ),
        (0, 4, &[Harm::Append], Some(Damage::Oversized), &[]),
        (1, 0, &[Harm::Delete], Some(Damage::Missing), &[0, 1, 2, 3]),
        (
            1,
            4,
            &[Harm::ZeroFill],
            Some(Damage::Corrupt),
            &[0, 1, 2, 3],
        ),
        // The short last data shard (500 bytes: chunks 0..2, the last 244 bytes).
        (2, 2, &[Harm::Flip(499)], Some(Damage::Corrupt), &[1]),
    ];
    for &(stripe, s, harms, damage, chunks) in &cases {
        for harm in harms {
            harm.apply(&f.path(stripe, s));
        }
        let check = reader.verify_shard(stripe, s).unwrap();
        assert_eq!(check.damage, damage, "{stripe}/{s} {harms:?}");
        assert_eq!(check.bad_chunks, chunks, "{stripe}/{s} {harms:?}");
        assert_eq!(check.is_ok(), damage.is_none());
    }
    // Every case is repaired back to the original bytes. Some stripes have several damaged
    // shards, but no chunk position has more than m = 2 bad shards, and repair works
    // chunk by chunk.
    let originals = f.expected_shards();
    for &(stripe, s, harms, _, chunks) in &cases {
        let n = reader.repair_shard(stripe, s, &mut Vec::new()).unwrap();
        let want = match (harms.is_empty(), chunks.len()) {
            (true, _) => 0,
            (false, 0) => 1, // oversized: rewritten, no chunk rebuilt
            (false, c) => c as u64,
        };
        assert_eq!(n, want, "{stripe}/{s} {harms:?}");
        assert!(
            fs::read(f.path(stripe, s)).unwrap() == originals[stripe][s],
            "{stripe}/{s}"
        );
    }
    assert_no_temporaries(&f.root);
}

#[test]
fn damage_beyond_m_is_unrecoverable_and_never_made_worse() {
    let f = damage_fixture(15);
    let reader = f.reader();
    let originals = f.expected_shards();
    // Three bad shards of stripe 1 (m = 2), overlapping in chunk 1 only for the flip:
    // chunk 1 has 2 verified shards, the other chunks 3.
    let harms = [
        (0usize, Harm::ZeroFill),
        (2, Harm::Delete),
        (3, Harm::Flip(300)),
    ];
    for &(s, harm) in &harms {
        harm.apply(&f.path(1, s));
    }
    let snapshot = |s: usize| fs::read(f.path(1, s)).ok();
    let damaged: Vec<Option<Vec<u8>>> = (0..5).map(snapshot).collect();

    // The whole stripe: unrecoverable, with the exact range and counts.
    let mut buf = vec![0u8; 3000];
    let mut bad = Vec::new();
    let err = reader.read(f.start(1, 0), &mut buf, &mut bad).unwrap_err();
    match err {
        Error::Unrecoverable {
            stripe,
            start,
            end,
            good,
            needed,
        } => {
            assert_eq!((stripe, start, end, good, needed), (1, 256, 512, 2, 3));
        }
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
    assert!(err_message_mentions(
        &reader,
        f.start(1, 0) + 300,
        "cannot be recovered"
    ));
    // The whole file, and one byte in the unrecoverable chunk, fail the same way.
    let mut all = vec![0u8; f.data.len()];
    assert!(matches!(
        reader.read(0, &mut all, &mut Vec::new()),
        Err(Error::Unrecoverable { stripe: 1, .. })
    ));
    assert!(matches!(
        reader.read(f.start(1, 0) + 256, &mut [0u8; 1], &mut Vec::new()),
        Err(Error::Unrecoverable {
            stripe: 1,
            start: 256,
            end: 512,
            ..
        })
    ));
    // Chunks that still have k verified shards are served, exact.
    read_ok(&reader, &f.data, f.start(1, 0), 256);
    read_ok(&reader, &f.data, f.start(1, 2) + 512, 488);
    // The healthy data shard of the stripe, and the other stripes, read normally.
    assert!(read_ok(&reader, &f.data, f.start(1, 1), 1000).is_empty());
    assert!(read_ok(&reader, &f.data, 0, 3000).is_empty());
    assert!(read_ok(&reader, &f.data, 6000, 2500).is_empty());

    // Repair fails for every damaged shard and leaves each exactly as it was.
    for &(s, _) in &harms {
        let mut bad = Vec::new();
        let err = reader.repair_shard(1, s, &mut bad).unwrap_err();
        assert!(
            matches!(err, Error::Unrecoverable { stripe: 1, .. }),
            "shard {s}: {err:?}"
        );
        for (t, snap) in damaged.iter().enumerate() {
            assert_eq!(&snapshot(t), snap, "repair of shard {s} changed shard {t}");
        }
    }
    assert_no_temporaries(&f.root);
    // Healthy shards need no repair and are left alone.
    assert_eq!(reader.repair_shard(1, 1, &mut Vec::new()).unwrap(), 0);
    assert_eq!(reader.repair_shard(1, 4, &mut Vec::new()).unwrap(), 0);
    // Verification still names the damage exactly.
    assert_eq!(
        reader.verify_shard(1, 0).unwrap().bad_chunks,
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        reader.verify_shard(1, 2).unwrap().damage,
        Some(Damage::Missing)
    );
    assert_eq!(reader.verify_shard(1, 3).unwrap().bad_chunks, vec![1]);

    // Once one shard comes back (say from a backup), the rest repairs exactly.
    fs::write(f.path(1, 2), &originals[1][2]).unwrap();
    assert_eq!(reader.repair_shard(1, 0, &mut Vec::new()).unwrap(), 4);
    assert_eq!(reader.repair_shard(1, 3, &mut Vec::new()).unwrap(), 1);
    assert_stripe_restored(&f, 1, &originals[1]);
    read_ok(&reader, &f.data, 0, f.data.len());
}

#[test]
fn repair_rebuilds_own_damage_next_to_a_position_beyond_parity() {
    let f = damage_fixture(16);
    let reader = f.reader();
    let originals = f.expected_shards();
    // Stripe 1 (3+2, chunks of 256): chunk 2 is bad in three shards (beyond m = 2); data
    // shard 0 is bad only in chunk 0, which has 4 verified shards. All in one window.
    Harm::Flip(10).apply(&f.path(1, 0));
    for (s, at) in [(1, 600), (2, 700), (3, 520)] {
        Harm::Flip(at).apply(&f.path(1, s));
    }
    let damaged: Vec<Vec<u8>> = (0..5).map(|s| fs::read(f.path(1, s)).unwrap()).collect();
    // Shard 0's own damage is rebuilt exactly, although chunk 2 of the stripe is lost.
    let mut bad = Vec::new();
    assert_eq!(reader.repair_shard(1, 0, &mut bad).unwrap(), 1);
    assert_eq!(fs::read(f.path(1, 0)).unwrap(), originals[1][0]);
    // The shards bad at the lost position stay exactly as they are.
    for (s, before) in damaged.iter().enumerate().take(4).skip(1) {
        let err = reader.repair_shard(1, s, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unrecoverable {
                    stripe: 1,
                    start: 512,
                    end: 768,
                    ..
                }
            ),
            "shard {s}: {err:?}"
        );
        assert_eq!(&fs::read(f.path(1, s)).unwrap(), before, "shard {s}");
    }
    assert_eq!(fs::read(f.path(1, 4)).unwrap(), damaged[4]);
    assert_no_temporaries(&f.root);
    // Chunks around the lost one read exactly; the lost chunk does not.
    read_ok(&reader, &f.data, f.start(1, 0), 1000);
    read_ok(&reader, &f.data, f.start(1, 1), 512);
    assert!(matches!(
        reader.read(f.start(1, 1) + 600, &mut [0u8; 1], &mut Vec::new()),
        Err(Error::Unrecoverable { stripe: 1, .. })
    ));
    // A parity shard bad next to the lost position is re-encoded the same way.
    fs::write(f.path(1, 3), &originals[1][3]).unwrap();
    Harm::Flip(100).apply(&f.path(1, 4));
    Harm::Flip(600).apply(&f.path(1, 3));
    assert_eq!(reader.repair_shard(1, 4, &mut Vec::new()).unwrap(), 1);
    assert_eq!(fs::read(f.path(1, 4)).unwrap(), originals[1][4]);
}

/// Whether a read of one byte at `offset` fails with a message containing `text`.
fn err_message_mentions(reader: &Reader, offset: u64, text: &str) -> bool {
    match reader.read(offset, &mut [0u8; 1], &mut Vec::new()) {
        Err(e) => e.to_string().contains(text),
        Ok(()) => false,
    }
}

#[test]
fn empty_reads_at_and_past_the_end_return_nothing() {
    let f = damage_fixture(31);
    let reader = f.reader();
    let size = f.data.len() as u64;
    for offset in [0, size / 2, size, size + 1, size + 1000, u64::MAX] {
        let mut bad = Vec::new();
        reader
            .read(offset, &mut [], &mut bad)
            .unwrap_or_else(|e| panic!("empty read at {offset}: {e}"));
        assert!(bad.is_empty());
    }
    // A non-empty read that does not fit is still refused, whatever the offset.
    for offset in [size, size - 1, u64::MAX] {
        let err = reader
            .read(offset, &mut [0u8; 2], &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}

#[test]
fn concurrent_readers_get_exact_bytes() {
    let f = damage_fixture(16);
    let reader = f.reader();
    Harm::Flip(100).apply(&f.path(0, 1));
    Harm::Delete.apply(&f.path(2, 4));
    Harm::Truncate(10).apply(&f.path(1, 0));
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (reader, f) = (&reader, &f);
            scope.spawn(move || {
                let mut rng = Rng::new(100 + t);
                for _ in 0..40 {
                    let offset = rng.below(f.data.len() as u64);
                    let len = 1 + rng.below(f.data.len() as u64 - offset).min(3000);
                    read_ok(reader, &f.data, offset, len as usize);
                }
            });
        }
    });
}

#[test]
fn wrong_manifest_never_yields_unverified_bytes() {
    // Parity 0 of stripe 0 is altered and the layout given hashes that match the altered
    // file: it verifies, but decoding with it gives wrong data. The rebuilt bytes must be
    // checked against the data shard's hashes and refused.
    let f = damage_fixture(21);
    let parity0 = f.path(0, 3);
    Harm::Flip(300).apply(&parity0);
    let mut spec = f.spec();
    let altered = fs::read(&parity0).unwrap();
    spec.stripes[0].parity[0].hashes = hashing::chunk_hashes(&altered, f.g.chunk as usize);
    let reader = Reader::new(spec);
    assert!(reader.verify_shard(0, 3).unwrap().is_ok());
    Harm::Delete.apply(&f.path(0, 1));

    // Chunk 0 of data shard 1 decodes right; chunk 1 does not and is refused.
    read_ok(&reader, &f.data, 1000, 256);
    let mut buf = vec![0u8; 1000];
    let err = reader.read(1000, &mut buf, &mut Vec::new()).unwrap_err();
    match &err {
        Error::RebuildMismatch { path, start, end } => {
            assert_eq!((path, *start, *end), (&f.path(0, 1), 256, 512));
        }
        other => panic!("expected RebuildMismatch, got {other:?}"),
    }
    // Repair refuses too, and writes nothing.
    let err = reader.repair_shard(0, 1, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::RebuildMismatch { .. }), "{err:?}");
    assert!(!f.path(0, 1).exists());
    assert_no_temporaries(&f.root);

    // A parity chunk whose recorded hash is wrong: re-encoding from verified data cannot
    // match it, so the repair is refused and the file left as it is.
    let mut spec = f.spec();
    spec.stripes[1].parity[1].hashes[2] = hashing::chunk_hash(b"not this chunk");
    let reader = Reader::new(spec);
    assert_eq!(reader.verify_shard(1, 4).unwrap().bad_chunks, vec![2]);
    let before = pin(&f.path(1, 4));
    let err = reader.repair_shard(1, 4, &mut Vec::new()).unwrap_err();
    match &err {
        Error::RebuildMismatch { path, start, end } => {
            assert_eq!((path, *start, *end), (&f.path(1, 4), 512, 768));
        }
        other => panic!("expected RebuildMismatch, got {other:?}"),
    }
    assert_eq!(identity(&f.path(1, 4)), before);
    assert!(fs::read(f.path(1, 4)).unwrap() == f.expected_shards()[1][4]);
    assert_no_temporaries(&f.root);
}

// ---------------------------------------------------------------------------------------
// 6. Repair rebuilds only the damaged range
// ---------------------------------------------------------------------------------------

#[test]
fn repair_rebuilds_only_damaged_chunks() {
    let f = Fixture::new(
        4 * 20000,
        Geometry {
            k: 4,
            m: 2,
            seg: 20000,
            chunk: 1024,
        },
        17,
    );
    let reader = f.reader();
    let originals = f.expected_shards();
    // One chunk of a data shard.
    Harm::Flip(5000).apply(&f.path(0, 1));
    assert_eq!(reader.repair_shard(0, 1, &mut Vec::new()).unwrap(), 1);
    // Two distant chunks of another.
    Harm::Flip(10).apply(&f.path(0, 3));
    Harm::Flip(19999).apply(&f.path(0, 3));
    assert_eq!(reader.repair_shard(0, 3, &mut Vec::new()).unwrap(), 2);
    // One chunk of a parity shard (its last, 64-byte-padded tail chunk).
    Harm::Flip(20030).apply(&f.path(0, 5));
    assert_eq!(reader.verify_shard(0, 5).unwrap().bad_chunks, vec![19]);
    assert_eq!(reader.repair_shard(0, 5, &mut Vec::new()).unwrap(), 1);
    // A data chunk whose repair needs the parity range of that chunk only, while another
    // parity chunk elsewhere is bad: the two ranges do not interact.
    Harm::Flip(1024 * 7 + 1).apply(&f.path(0, 0));
    Harm::Flip(1024 * 15).apply(&f.path(0, 4));
    assert_eq!(reader.repair_shard(0, 0, &mut Vec::new()).unwrap(), 1);
    assert_eq!(reader.repair_shard(0, 4, &mut Vec::new()).unwrap(), 1);
    assert_stripe_restored(&f, 0, &originals[0]);
    // A shard that is only too long is rewritten to its exact length.
    Harm::Append.apply(&f.path(0, 2));
    assert_eq!(reader.repair_shard(0, 2, &mut Vec::new()).unwrap(), 1);
    assert!(fs::read(f.path(0, 2)).unwrap() == originals[0][2]);
    assert_no_temporaries(&f.root);
}

#[test]
fn repair_recreates_a_deleted_parity_directory() {
    let f = damage_fixture(22);
    let reader = f.reader();
    let originals = f.expected_shards();
    let dir = f.path(1, 3).parent().unwrap().to_path_buf();
    fs::remove_dir_all(&dir).unwrap();
    // Reads need no parity while the data is intact.
    assert!(read_ok(&reader, &f.data, 0, f.data.len()).is_empty());
    for s in [3, 4] {
        let check = reader.verify_shard(1, s).unwrap();
        assert_eq!(check.damage, Some(Damage::Missing));
        assert_eq!(check.bad_chunks, vec![0, 1, 2, 3]);
        assert_eq!(reader.repair_shard(1, s, &mut Vec::new()).unwrap(), 4);
    }
    assert_stripe_restored(&f, 1, &originals[1]);
    assert_no_temporaries(&f.root);
}

#[test]
fn repair_in_a_later_window_of_a_long_shard() {
    // Shards longer than the reader's window (as many whole chunks as fit in 1 MiB: 5 of
    // these 192 KiB chunks): the damage sits in the second window.
    let g = Geometry {
        k: 2,
        m: 1,
        seg: (1 << 20) + 70000,
        chunk: 3 << 16,
    };
    let f = Fixture::new(2 * g.seg, g, 18);
    let reader = f.reader();
    let originals = f.expected_shards();
    Harm::Flip((1 << 20) + 65536 + 5).apply(&f.path(0, 0));
    assert_eq!(reader.verify_shard(0, 0).unwrap().bad_chunks, vec![5]);
    Harm::Flip(3).apply(&f.path(0, 2));
    assert_eq!(reader.repair_shard(0, 0, &mut Vec::new()).unwrap(), 1);
    assert_eq!(reader.repair_shard(0, 2, &mut Vec::new()).unwrap(), 1);
    assert_stripe_restored(&f, 0, &originals[0]);
    read_ok(&reader, &f.data, (1 << 20) - 10, 200_000);
}

// ---------------------------------------------------------------------------------------
// 7. Commit and layout errors
// ---------------------------------------------------------------------------------------

#[test]
fn commit_errors() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let data = Rng::new(19).bytes(5000);
    fs::write(&source, &data).unwrap();
    let g = Geometry {
        k: 2,
        m: 1,
        seg: 1000,
        chunk: 256,
    };

    // A plan for a different size: the file is not what was planned for.
    for size in [4999u64, 5001] {
        let root = dir.path().join(format!("wrong-{size}"));
        let plan = make_plan(size, g);
        let err = commit::commit(&source, &root, g.chunk, &plan, &Progress::default()).unwrap_err();
        assert!(
            matches!(&err, Error::SourceChanged { path } if path == &source),
            "{err:?}"
        );
        assert!(!root.exists(), "nothing is written for a wrong plan");
    }

    // Cancelled before it starts.
    let root = dir.path().join("cancelled");
    let progress = Progress::default();
    progress.cancel.store(true, Ordering::Relaxed);
    let err = commit::commit(&source, &root, g.chunk, &make_plan(5000, g), &progress).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");

    // Chunk sizes that are not a positive multiple of 64 up to 1 MiB.
    for chunk in [0u64, 100, 65, (1 << 20) + 64] {
        let root = dir.path().join(format!("chunk-{chunk}"));
        let err = commit::commit(
            &source,
            &root,
            chunk,
            &make_plan(5000, g),
            &Progress::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Layout(_)), "chunk {chunk}: {err:?}");
    }

    // Shard paths that would escape the object directory.
    for bad in [
        "/tmp/escape.dat",
        "../escape.dat",
        "a/../../escape.dat",
        "./x.dat",
        "",
    ] {
        let mut plan = make_plan(5000, g);
        plan[0].parity[0].path = PathBuf::from(bad);
        let root = dir.path().join("escape");
        let err = commit::commit(&source, &root, g.chunk, &plan, &Progress::default()).unwrap_err();
        assert!(matches!(err, Error::Layout(_)), "{bad:?}: {err:?}");
        assert!(!root.exists() && !dir.path().join("escape.dat").exists());
    }

    // A stripe without parity.
    let mut plan = make_plan(5000, g);
    plan[1].parity.clear();
    let root = dir.path().join("no-parity");
    assert!(commit::commit(&source, &root, g.chunk, &plan, &Progress::default()).is_err());

    // A missing source.
    let missing = dir.path().join("nope.bin");
    let err = commit::commit(
        &missing,
        &root,
        g.chunk,
        &make_plan(5000, g),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path == &missing),
        "{err:?}"
    );

    // Committing over existing shards never overwrites them.
    let root = dir.path().join("twice");
    let plan = make_plan(5000, g);
    commit::commit(&source, &root, g.chunk, &plan, &Progress::default()).unwrap();
    let first = fs::read(root.join(&plan[0].data[0].path)).unwrap();
    fs::write(&source, vec![7u8; 5000]).unwrap();
    let err = commit::commit(&source, &root, g.chunk, &plan, &Progress::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(fs::read(root.join(&plan[0].data[0].path)).unwrap(), first);
}

#[test]
fn layout_errors() {
    let f = damage_fixture(20);
    let good = f.spec();
    let root = f.root.clone();
    let build = |edit: &dyn Fn(&mut Vec<StripeSpec>)| {
        let mut stripes = good.stripes.clone();
        edit(&mut stripes);
        ObjectSpec::new(&root, good.chunk_size, stripes)
    };
    let layout_err = |r: blockframe_core::Result<ObjectSpec>| matches!(r, Err(Error::Layout(_)));
    assert!(build(&|_| {}).is_ok());
    assert!(layout_err(build(&|s| s.clear())));
    assert!(layout_err(build(&|s| s[0].parity.clear())));
    assert!(layout_err(build(&|s| s[1].data.clear())));
    assert!(layout_err(build(&|s| s[0].parity[1].len = 1000)));
    assert!(layout_err(build(&|s| {
        s[2].data[2].hashes.pop();
    })));
    assert!(layout_err(build(&|s| s[0].parity[0].hashes.push([0; 32]))));
    assert!(layout_err(build(&|s| {
        s[2].data[2].len = 0;
        s[2].data[2].hashes.clear();
    })));
    for chunk in [0u64, 100, 2 << 20] {
        assert!(layout_err(ObjectSpec::new(
            &root,
            chunk,
            good.stripes.clone()
        )));
    }
    // A layout whose hashes are wrong fails reads (with nothing returned), never passes
    // unverified bytes.
    let mut stripes = good.stripes.clone();
    for st in &mut stripes {
        for sh in st.data.iter_mut().chain(&mut st.parity) {
            for h in &mut sh.hashes {
                h[0] ^= 1;
            }
        }
    }
    let reader = Reader::new(ObjectSpec::new(&root, good.chunk_size, stripes).unwrap());
    let err = reader.read(0, &mut [0u8; 10], &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::Unrecoverable { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// The verified-chunk cache.

#[test]
fn cached_reader_returns_exact_bytes_and_stays_within_budget() {
    use blockframe_core::cache::ChunkCache;
    use std::sync::Arc;

    let f = damage_fixture(77);
    let budget = 3 * 256;
    let cache = Arc::new(ChunkCache::new(budget));
    let reader = Reader::with_cache(f.spec(), Arc::clone(&cache));
    let mut rng = Rng::new(5);
    for _ in 0..400 {
        let off = rng.below(f.data.len() as u64);
        let len = 1 + rng.below(700).min(f.data.len() as u64 - off - 1) as usize;
        let mut out = vec![0u8; len];
        let mut bad = Vec::new();
        reader.read(off, &mut out, &mut bad).unwrap();
        assert_eq!(
            out,
            &f.data[off as usize..off as usize + len],
            "{off}+{len}"
        );
        assert!(bad.is_empty());
        let (_, bytes, max, _, _) = cache.stats();
        assert!(bytes <= max, "{bytes} > {max}");
    }
    let (_, _, _, hits, _) = cache.stats();
    assert!(
        hits > 0,
        "unaligned neighbouring reads should hit the cache"
    );
}

#[test]
fn cache_holds_rebuilt_chunks_and_never_unverified_ones() {
    use blockframe_core::cache::ChunkCache;
    use std::sync::Arc;

    let f = damage_fixture(78);
    let cache = Arc::new(ChunkCache::new(1 << 20));
    let reader = Reader::with_cache(f.spec(), Arc::clone(&cache));
    // Damage chunk 0 of data shard 0 of stripe 0: it is rebuilt and kept.
    let shard0 = f.root.join(&f.plan[0].data[0].path);
    let mut raw = fs::read(&shard0).unwrap();
    raw[10] ^= 0xFF;
    fs::write(&shard0, &raw).unwrap();
    let mut out = vec![0u8; 100];
    let mut bad = Vec::new();
    reader.read(0, &mut out, &mut bad).unwrap();
    assert_eq!(out, &f.data[..100]);
    assert_eq!(bad.len(), 1);
    // Now destroy every shard of that stripe: the rebuilt, verified chunk still serves.
    for p in f.plan[0]
        .data
        .iter()
        .map(|d| &d.path)
        .chain(f.plan[0].parity.iter().map(|p| &p.path))
    {
        fs::remove_file(f.root.join(p)).unwrap();
    }
    let mut bad = Vec::new();
    reader.read(0, &mut out, &mut bad).unwrap();
    assert_eq!(out, &f.data[..100]);
    // A chunk that cannot be verified is an error and is not cached.
    let (entries, ..) = cache.stats();
    let mut bad = Vec::new();
    let mut far = vec![0u8; 10];
    let err = reader.read(600, &mut far, &mut bad).unwrap_err();
    assert!(matches!(err, Error::Unrecoverable { .. }), "{err:?}");
    assert_eq!(cache.stats().0, entries);
}

#[test]
fn readers_of_the_same_object_share_cached_chunks() {
    use blockframe_core::cache::ChunkCache;
    use std::sync::Arc;

    // The cache is keyed by chunk content, not by reader: a second reader of the object
    // (a reopening, another file handle, another mount) finds what the first one kept.
    let f = damage_fixture(79);
    let cache = Arc::new(ChunkCache::new(1 << 20));
    let first = Reader::with_cache(f.spec(), Arc::clone(&cache));
    // An unaligned read keeps its edge chunks; a damaged chunk is rebuilt and kept.
    Harm::Flip(700).apply(&f.path(0, 1));
    let start = f.start(0, 1) + 600;
    let mut bad = Vec::new();
    let mut out = vec![0u8; 300];
    first.read(start, &mut out, &mut bad).unwrap();
    assert!(out[..] == f.data[start as usize..start as usize + 300]);
    assert_eq!(bad.len(), 1);
    let (entries, ..) = cache.stats();
    assert!(entries > 0);

    // Without the shards of that stripe, a new reader serves the same range from the cache
    // alone, every chunk a hit.
    for s in 0..f.shard_count(0) {
        Harm::Delete.apply(&f.path(0, s));
    }
    let second = Reader::with_cache(f.spec(), Arc::clone(&cache));
    let (_, _, _, hits, misses) = cache.stats();
    let mut again = vec![0u8; 300];
    let mut bad = Vec::new();
    second.read(start, &mut again, &mut bad).unwrap();
    assert!(again == out && bad.is_empty());
    let (_, _, _, hits2, misses2) = cache.stats();
    assert!(hits2 > hits, "the second reader hit nothing");
    assert_eq!(misses2, misses, "the second reader missed");
    // A reader with its own cache has nothing to go on.
    let cold = Reader::with_cache(f.spec(), Arc::new(ChunkCache::new(1 << 20)));
    let err = cold.read(start, &mut again, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::Unrecoverable { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Readers over another shard source (the remote client's path).

struct FlakySource {
    files: LocalFiles,
    /// (stripe, shard) whose bytes are corrupted on the way
    corrupt: (usize, usize),
    /// (stripe, shard) that cannot be fetched at all
    unreadable: (usize, usize),
}

impl blockframe_core::source::ShardSource for FlakySource {
    fn read_range(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> blockframe_core::Result<(usize, Option<blockframe_core::shardio::Problem>)> {
        use blockframe_core::shardio::Problem;
        if (stripe, shard) == self.unreadable {
            return Ok((0, Some(Problem::Unreadable)));
        }
        let r = self.files.read_range(stripe, shard, start, buf)?;
        if (stripe, shard) == self.corrupt && r.0 > 0 {
            buf[0] ^= 0x80;
        }
        Ok(r)
    }
}

#[test]
fn reader_over_another_source_verifies_and_rebuilds() {
    let f = damage_fixture(91);
    // One corrupted-in-transit data shard and one unreachable shard in stripe 1: within
    // parity (m = 2), so every byte still comes back exact.
    let source = FlakySource {
        files: LocalFiles::new(&f.spec()),
        corrupt: (1, 0),
        unreadable: (1, 2),
    };
    let reader = Reader::with_source(f.spec(), None, Box::new(source));
    assert!(!reader.can_repair());
    let mut out = vec![0u8; f.data.len()];
    let mut bad = Vec::new();
    reader.read(0, &mut out, &mut bad).unwrap();
    assert_eq!(out, f.data);
    let stripes: BTreeSet<(usize, usize)> = bad.iter().map(|b| (b.stripe, b.shard)).collect();
    assert!(
        stripes.contains(&(1, 0)) && stripes.contains(&(1, 2)),
        "{bad:?}"
    );
    // A third loss in the same stripe is beyond parity: an error, never wrong bytes.
    struct Worse(FlakySource);
    impl blockframe_core::source::ShardSource for Worse {
        fn read_range(
            &self,
            stripe: usize,
            shard: usize,
            start: u64,
            buf: &mut [u8],
        ) -> blockframe_core::Result<(usize, Option<blockframe_core::shardio::Problem>)> {
            if (stripe, shard) == (1, 1) {
                return Ok((0, Some(blockframe_core::shardio::Problem::Missing)));
            }
            self.0.read_range(stripe, shard, start, buf)
        }
    }
    let worse = Worse(FlakySource {
        files: LocalFiles::new(&f.spec()),
        corrupt: (1, 0),
        unreadable: (1, 2),
    });
    let reader = Reader::with_source(f.spec(), None, Box::new(worse));
    let mut bad = Vec::new();
    let err = reader.read(0, &mut out, &mut bad).unwrap_err();
    assert!(
        matches!(err, Error::Unrecoverable { stripe: 1, .. }),
        "{err:?}"
    );
    // Whatever the buffer holds after the error is either verified file bytes or zeros.
    assert!(out.iter().zip(&f.data).all(|(&o, &d)| o == 0 || o == d));
}

// ---------------------------------------------------------------------------------------
// Commits spread over several roots (volumes).

/// Every file under `dir` (relative to it), or nothing when `dir` does not exist.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    if dir.exists() {
        list_files(dir)
    } else {
        BTreeSet::new()
    }
}

#[test]
fn commit_to_several_roots_places_every_shard() {
    let g = Geometry {
        k: 3,
        m: 2,
        seg: 1000,
        chunk: 256,
    };
    let size = 8500;
    // The same file committed to one root is the reference.
    let f = Fixture::new(size, g, 31);
    let expected = f.expected_shards();
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<(PathBuf, bool)> = vec![
        (dir.path().join("vol0"), true),
        (dir.path().join("vol1"), true),
        (dir.path().join("scratch"), false),
    ];
    // Data shards round-robin over the two durable volumes, parity 0 on vol1, parity 1 on
    // the non-durable scratch root (to be uploaded elsewhere).
    let mut plan = make_plan(size, g);
    for (si, st) in plan.iter_mut().enumerate() {
        for (i, d) in st.data.iter_mut().enumerate() {
            d.root = (si + i) % 2;
        }
        st.parity[0].root = 1;
        st.parity[1].root = 2;
    }
    let progress = Progress::default();
    let out = commit::commit_to_roots(&f.source, &roots, g.chunk, &plan, &progress).unwrap();
    assert_eq!(out.content_hash, f.out.content_hash);
    assert_eq!(
        out.hashes, f.out.hashes,
        "placement does not change any hash"
    );
    assert_eq!(progress.done.load(Ordering::Relaxed), size);

    // Each root holds exactly its shards, with the bytes of the one-root commit.
    let mut wanted: Vec<BTreeSet<PathBuf>> = vec![BTreeSet::new(); roots.len()];
    for (si, st) in plan.iter().enumerate() {
        let targets = st
            .data
            .iter()
            .map(|d| (d.root, &d.path))
            .chain(st.parity.iter().map(|p| (p.root, &p.path)));
        for (s, (r, rel)) in targets.enumerate() {
            wanted[r].insert(rel.clone());
            let bytes = fs::read(roots[r].0.join(rel)).unwrap();
            assert!(
                bytes == expected[si][s],
                "stripe {si} shard {s} on root {r}"
            );
        }
    }
    for (r, (root, _)) in roots.iter().enumerate() {
        assert_eq!(files_under(root), wanted[r], "root {r}");
    }

    // A layout whose shards name their own object directory (one per volume), and one of
    // absolute shard paths, read, verify and repair like a local object; the object's own
    // root is never used.
    let own_dir = |r: usize, rel: &Path, len, hashes| ShardSpec {
        dir: Some(roots[r].0.clone()),
        ..ShardSpec::new(rel, len, hashes)
    };
    let absolute =
        |r: usize, rel: &Path, len, hashes| ShardSpec::new(roots[r].0.join(rel), len, hashes);
    for place in [&own_dir as Placer<'_>, &absolute] {
        let spec = layout_of(&plan, &out, g.chunk, &dir.path().join("unused"), place);
        assert_eq!(
            spec.path(0, 0),
            roots[plan[0].data[0].root].0.join(&plan[0].data[0].path)
        );
        let reader = Reader::new(spec);
        let mut all = vec![0u8; size as usize];
        let mut bad = Vec::new();
        reader.read(0, &mut all, &mut bad).unwrap();
        assert!(all == f.data && bad.is_empty());
        let victim = roots[1].0.join(&plan[1].data[0].path);
        Harm::Flip(300).apply(&victim);
        let parity = roots[2].0.join(&plan[1].parity[1].path);
        Harm::Delete.apply(&parity);
        assert_eq!(reader.verify_shard(1, 0).unwrap().bad_chunks, vec![1]);
        assert_eq!(
            reader.verify_shard(1, 4).unwrap().damage,
            Some(Damage::Missing)
        );
        assert_eq!(reader.repair_shard(1, 0, &mut Vec::new()).unwrap(), 1);
        assert_eq!(reader.repair_shard(1, 4, &mut Vec::new()).unwrap(), 4);
        assert!(fs::read(&victim).unwrap() == expected[1][0]);
        assert!(fs::read(&parity).unwrap() == expected[1][4]);
        for (root, _) in &roots {
            assert_no_temporaries(root);
        }
    }
    assert!(!dir.path().join("unused").exists());

    // Everything on one non-durable root works the same.
    let scratch = vec![(dir.path().join("only-scratch"), false)];
    let out = commit::commit_to_roots(
        &f.source,
        &scratch,
        g.chunk,
        &make_plan(size, g),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(out.hashes, f.out.hashes);
    assert_eq!(files_under(&scratch[0].0), list_files(&f.root));
    for (si, st) in expected.iter().enumerate() {
        for (s, want) in st.iter().enumerate() {
            assert!(fs::read(scratch[0].0.join(f.rel(si, s))).unwrap() == *want);
        }
    }
}

#[test]
fn commit_to_roots_rejects_bad_placements() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    fs::write(&source, Rng::new(32).bytes(5000)).unwrap();
    let g = Geometry {
        k: 2,
        m: 1,
        seg: 1000,
        chunk: 256,
    };
    let roots = vec![(dir.path().join("a"), true), (dir.path().join("b"), false)];
    let nothing_written = |roots: &[(PathBuf, bool)]| roots.iter().all(|(r, _)| !r.exists());

    // A root index past the roots, on a data shard and on a parity shard.
    for parity in [false, true] {
        let mut plan = make_plan(5000, g);
        if parity {
            plan[2].parity[0].root = 2;
        } else {
            plan[1].data[1].root = 5;
        }
        let err = commit::commit_to_roots(&source, &roots, g.chunk, &plan, &Progress::default())
            .unwrap_err();
        assert!(
            matches!(&err, Error::Layout(m) if m.contains("root index")),
            "{err:?}"
        );
        assert!(nothing_written(&roots));
    }
    // No roots at all.
    let err = commit::commit_to_roots(
        &source,
        &[],
        g.chunk,
        &make_plan(5000, g),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{err:?}");
    // The one-root wrapper refuses any other index.
    let mut plan = make_plan(5000, g);
    plan[0].data[0].root = 1;
    let err =
        commit::commit(&source, &roots[0].0, g.chunk, &plan, &Progress::default()).unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{err:?}");
    // Paths stay relative to their root, whichever root it is.
    let mut plan = make_plan(5000, g);
    plan[1].parity[0].root = 1;
    plan[1].parity[0].path = dir.path().join("escape.dat");
    let err =
        commit::commit_to_roots(&source, &roots, g.chunk, &plan, &Progress::default()).unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{err:?}");
    assert!(nothing_written(&roots) && !dir.path().join("escape.dat").exists());
}

// ---------------------------------------------------------------------------------------
// Verify and repair through a shard source and sink (shards kept in object storage).

/// Shards held in memory: a source to read them from and a sink repaired shards go to.
#[derive(Default)]
struct Bucket {
    /// Per stripe and shard: its bytes, or None when missing.
    shards: std::sync::Mutex<Vec<Vec<Option<Vec<u8>>>>>,
    /// Every store call: (stripe, shard, bytes).
    stored: std::sync::Mutex<Vec<(usize, usize, Vec<u8>)>>,
    fetches: std::sync::atomic::AtomicUsize,
    /// When set, the sink refuses every shard with this message.
    refuse: Option<String>,
}

impl Bucket {
    /// A bucket holding the current shard files of a fixture.
    fn of(f: &Fixture) -> std::sync::Arc<Self> {
        let shards = (0..f.plan.len())
            .map(|si| {
                (0..f.shard_count(si))
                    .map(|s| fs::read(f.path(si, s)).ok())
                    .collect()
            })
            .collect();
        std::sync::Arc::new(Self {
            shards: std::sync::Mutex::new(shards),
            ..Self::default()
        })
    }

    fn edit(&self, stripe: usize, shard: usize, how: impl FnOnce(&mut Option<Vec<u8>>)) {
        how(&mut self.shards.lock().unwrap()[stripe][shard]);
    }

    fn get(&self, stripe: usize, shard: usize) -> Option<Vec<u8>> {
        self.shards.lock().unwrap()[stripe][shard].clone()
    }

    fn stores(&self) -> Vec<(usize, usize, Vec<u8>)> {
        self.stored.lock().unwrap().clone()
    }
}

/// A handle on a shared bucket, as the reader owns its source and sink.
struct BucketHandle(std::sync::Arc<Bucket>);

impl blockframe_core::source::ShardSource for BucketHandle {
    fn read_range(
        &self,
        stripe: usize,
        shard: usize,
        start: u64,
        buf: &mut [u8],
    ) -> blockframe_core::Result<(usize, Option<blockframe_core::shardio::Problem>)> {
        use blockframe_core::shardio::Problem;
        self.0.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(match &self.0.shards.lock().unwrap()[stripe][shard] {
            None => (0, Some(Problem::Missing)),
            Some(bytes) => {
                let start = (start as usize).min(bytes.len());
                let n = (bytes.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                (n, (n < buf.len()).then_some(Problem::Short))
            }
        })
    }
}

impl blockframe_core::source::ShardSink for BucketHandle {
    fn begin(
        &self,
        stripe: usize,
        shard: usize,
        path: &Path,
    ) -> blockframe_core::Result<Box<dyn blockframe_core::source::ShardWriter + '_>> {
        use blockframe_core::source::{Gather, Refusal};
        Ok(Box::new(Gather::new(stripe, shard, path, move |data| {
            if let Some(message) = &self.0.refuse {
                return Err(Refusal::Message(message.clone()));
            }
            self.0
                .stored
                .lock()
                .unwrap()
                .push((stripe, shard, data.clone()));
            self.0.edit(stripe, shard, |s| *s = Some(data));
            Ok(())
        })))
    }
}

fn bucket_reader(f: &Fixture, bucket: &std::sync::Arc<Bucket>, sink: bool) -> Reader {
    let source = Box::new(BucketHandle(std::sync::Arc::clone(bucket)));
    let reader = Reader::with_source(f.spec(), None, source);
    if sink {
        reader.with_sink(Box::new(BucketHandle(std::sync::Arc::clone(bucket))))
    } else {
        reader
    }
}

#[test]
fn verify_through_a_source_matches_local_verification() {
    let f = damage_fixture(41);
    // The same damage as the local verification test, done to the files first.
    let harms: [(usize, usize, Harm); 7] = [
        (0, 1, Harm::Flip(999)),
        (0, 2, Harm::Truncate(512)),
        (2, 3, Harm::Truncate(300)),
        (0, 4, Harm::Append),
        (1, 0, Harm::Delete),
        (1, 4, Harm::ZeroFill),
        (2, 2, Harm::Flip(499)),
    ];
    for &(stripe, s, harm) in &harms {
        harm.apply(&f.path(stripe, s));
    }
    let bucket = Bucket::of(&f);
    let remote = bucket_reader(&f, &bucket, false);
    let local = f.reader();
    assert!(!remote.can_repair() && local.can_repair());
    for si in 0..f.plan.len() {
        for s in 0..f.shard_count(si) {
            let (l, r) = (
                local.verify_shard(si, s).unwrap(),
                remote.verify_shard(si, s).unwrap(),
            );
            assert_eq!(
                (l.damage, &l.bad_chunks),
                (r.damage, &r.bad_chunks),
                "{si}/{s}"
            );
            let harm = harms.iter().find(|h| (h.0, h.1) == (si, s));
            assert_eq!(r.damage, harm.map(|h| h.2.damage()), "{si}/{s}");
        }
    }
    // Without a sink, a damaged shard cannot be repaired and a healthy one needs nothing.
    assert_eq!(remote.repair_shard(0, 0, &mut Vec::new()).unwrap(), 0);
    let err = remote.repair_shard(0, 1, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&err, Error::NoSink { stripe: 0, shard: 1, path } if *path == f.path(0, 1)),
        "{err:?}"
    );
    assert!(err.to_string().contains("cannot be repaired here"), "{err}");
    assert!(bucket.stores().is_empty());
}

#[test]
fn repair_through_a_sink_restores_exact_bytes() {
    let f = damage_fixture(42);
    let originals = f.expected_shards();
    let bucket = Bucket::of(&f);
    let reader = bucket_reader(&f, &bucket, true);
    assert!(reader.can_repair());
    // Healthy shards: nothing is stored.
    for si in 0..f.plan.len() {
        for s in 0..f.shard_count(si) {
            assert_eq!(reader.repair_shard(si, s, &mut Vec::new()).unwrap(), 0);
        }
    }
    assert!(bucket.stores().is_empty());

    // (stripe, shard, damage, chunks rebuilt)
    let flip = |at: usize| move |s: &mut Option<Vec<u8>>| s.as_mut().unwrap()[at] ^= 0x40;
    type Edit = Box<dyn Fn(&mut Option<Vec<u8>>)>;
    let cases: Vec<(usize, usize, Edit, Damage, u64)> = vec![
        (1, 0, Box::new(flip(600)), Damage::Corrupt, 1),
        (0, 4, Box::new(|s| *s = None), Damage::Missing, 4),
        (
            2,
            2,
            Box::new(|s| s.as_mut().unwrap().truncate(100)),
            Damage::Short,
            2,
        ),
        (
            2,
            3,
            Box::new(|s| s.as_mut().unwrap().extend_from_slice(b"not ours")),
            Damage::Oversized,
            1,
        ),
    ];
    for (n, (stripe, s, harm, damage, rebuilt)) in cases.iter().enumerate() {
        bucket.edit(*stripe, *s, harm);
        assert_eq!(
            reader.verify_shard(*stripe, *s).unwrap().damage,
            Some(*damage)
        );
        let mut bad = Vec::new();
        let got = reader.repair_shard(*stripe, *s, &mut bad).unwrap();
        assert_eq!(got, *rebuilt, "{stripe}/{s} {damage:?}");
        let stores = bucket.stores();
        assert_eq!(stores.len(), n + 1, "one store per repair");
        let (ss, sh, bytes) = &stores[n];
        assert_eq!((*ss, *sh), (*stripe, *s));
        assert!(
            *bytes == originals[*stripe][*s],
            "{stripe}/{s}: stored bytes"
        );
        assert!(reader.verify_shard(*stripe, *s).unwrap().is_ok());
        assert_eq!(
            reader.repair_shard(*stripe, *s, &mut Vec::new()).unwrap(),
            0
        );
    }
    // The local files were never touched.
    for (si, shards) in originals.iter().enumerate() {
        for (s, want) in shards.iter().enumerate() {
            assert!(fs::read(f.path(si, s)).unwrap() == *want);
        }
    }

    // Beyond parity: three shards of stripe 1 bad in chunk 1 (m = 2). Repair fails, no
    // store is made, and the bucket is left as it was.
    for (s, at) in [(0, 300), (1, 400), (3, 500)] {
        bucket.edit(1, s, flip(at));
    }
    let before: Vec<Option<Vec<u8>>> = (0..5).map(|s| bucket.get(1, s)).collect();
    let stores = bucket.stores().len();
    for s in [0, 1, 3] {
        let err = reader.repair_shard(1, s, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, Error::Unrecoverable { stripe: 1, .. }),
            "{s}: {err:?}"
        );
    }
    assert_eq!(
        bucket.stores().len(),
        stores,
        "a failed repair stores nothing"
    );
    for (s, snap) in before.iter().enumerate() {
        assert_eq!(&bucket.get(1, s), snap);
    }
    // Once a shard comes back the rest repairs exactly.
    bucket.edit(1, 1, |s| *s = Some(originals[1][1].clone()));
    assert_eq!(reader.repair_shard(1, 0, &mut Vec::new()).unwrap(), 1);
    assert_eq!(reader.repair_shard(1, 3, &mut Vec::new()).unwrap(), 1);
    for (s, want) in originals[1].iter().enumerate() {
        assert!(bucket.get(1, s).unwrap() == *want);
    }
    let mut all = vec![0u8; f.data.len()];
    let mut bad = Vec::new();
    reader.read(0, &mut all, &mut bad).unwrap();
    assert!(all == f.data && bad.is_empty());
}

#[test]
fn a_refused_store_is_an_error_with_context() {
    let f = damage_fixture(43);
    let mut bucket = std::sync::Arc::into_inner(Bucket::of(&f)).unwrap();
    bucket.refuse = Some("bucket is read-only".into());
    let bucket = std::sync::Arc::new(bucket);
    let reader = bucket_reader(&f, &bucket, true);
    bucket.edit(2, 1, |s| *s = None);
    let err = reader.repair_shard(2, 1, &mut Vec::new()).unwrap_err();
    match &err {
        Error::Store {
            stripe,
            shard,
            path,
            message,
        } => {
            assert_eq!((*stripe, *shard, path), (2, 1, &f.path(2, 1)));
            assert_eq!(message, "bucket is read-only");
        }
        other => panic!("expected Store, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("bucket is read-only") && text.contains("stripe 2"),
        "{text}"
    );
    assert_eq!(bucket.get(2, 1), None);
}

#[test]
fn source_repair_of_a_shard_longer_than_a_window() {
    // Shards of 1 MiB + 70000 bytes with 192 KiB chunks: the reader's window is 5 chunks,
    // so repair assembles the shard from two windows.
    let g = Geometry {
        k: 2,
        m: 1,
        seg: (1 << 20) + 70000,
        chunk: 3 << 16,
    };
    let f = Fixture::new(2 * g.seg, g, 44);
    let originals = f.expected_shards();
    let bucket = Bucket::of(&f);
    let reader = bucket_reader(&f, &bucket, true);
    bucket.edit(0, 0, |s| s.as_mut().unwrap()[(1 << 20) + 65536 + 5] ^= 1);
    assert_eq!(reader.verify_shard(0, 0).unwrap().bad_chunks, vec![5]);
    assert_eq!(reader.repair_shard(0, 0, &mut Vec::new()).unwrap(), 1);
    assert!(bucket.get(0, 0).unwrap() == originals[0][0]);

    // A missing shard is verified with one fetch, not one per window.
    bucket.edit(0, 2, |s| *s = None);
    bucket.fetches.store(0, Ordering::Relaxed);
    let check = reader.verify_shard(0, 2).unwrap();
    assert_eq!(check.damage, Some(Damage::Missing));
    assert_eq!(check.bad_chunks, (0..6).collect::<Vec<u64>>());
    assert_eq!(bucket.fetches.load(Ordering::Relaxed), 1);
    assert_eq!(reader.repair_shard(0, 2, &mut Vec::new()).unwrap(), 6);
    assert!(bucket.get(0, 2).unwrap() == originals[0][2]);
    // A shard cut short in its first window: every later chunk is bad, counted exactly.
    bucket.edit(0, 1, |s| s.as_mut().unwrap().truncate(1000));
    let check = reader.verify_shard(0, 1).unwrap();
    assert_eq!(check.damage, Some(Damage::Short));
    assert_eq!(check.bad_chunks, (0..6).collect::<Vec<u64>>());
    assert_eq!(reader.repair_shard(0, 1, &mut Vec::new()).unwrap(), 6);
    assert!(bucket.get(0, 1).unwrap() == originals[0][1]);
}

// ---------------------------------------------------------------------------------------
// Watching a commit: progress reports, cancellation, no polling floor, no panics.

#[test]
fn a_watched_job_returns_as_soon_as_it_finishes() {
    // The wait ends when the worker does, not at the next poll: a hundred instant jobs
    // watched with an hour between reports take far less than a second. (A 20 ms polling
    // sleep, as before, needed at least two seconds for them.)
    let progress = Progress::default();
    let started = std::time::Instant::now();
    let mut reports = 0;
    for i in 0..100u64 {
        let got = commit::run_watched(
            &progress,
            std::time::Duration::from_secs(3600),
            || Ok(i * 2),
            |_| {
                reports += 1;
                true
            },
        );
        assert_eq!(got.unwrap(), i * 2);
    }
    assert_eq!(reports, 0);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_watched_job_reports_progress_and_stops_when_asked() {
    let progress = Progress::default();
    let mut seen = Vec::new();
    let got: blockframe_core::Result<()> = commit::run_watched(
        &progress,
        std::time::Duration::from_millis(1),
        || {
            // Work that only ends when cancelled, moving its progress counter.
            while !progress.cancel.load(Ordering::Relaxed) {
                progress.done.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            Err(Error::Cancelled)
        },
        |done| {
            seen.push(done);
            seen.len() < 3
        },
    );
    assert!(matches!(got, Err(Error::Cancelled)), "{got:?}");
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

#[test]
fn a_panicking_worker_is_an_error_with_context() {
    let progress = Progress::default();
    let got: blockframe_core::Result<()> = commit::run_watched(
        &progress,
        std::time::Duration::from_secs(3600),
        || panic!("worker exploded"),
        |_| true,
    );
    match got {
        Err(e @ Error::Panicked { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("commit worker thread") && text.contains("worker exploded"),
                "{text}"
            );
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let caught =
        blockframe_core::error::catch_panic("a read", || -> blockframe_core::Result<()> {
            panic!("{} went wrong", 42)
        });
    assert_eq!(
        caught.unwrap_err().to_string(),
        "internal error in a read: 42 went wrong"
    );
}

// ---------------------------------------------------------------------------------------
// Links, FIFOs and vanished objects: nothing inside an object is followed or waited on.

/// Bytes, inode and mtime of every file under `dir` (never following a link), keyed by
/// path relative to `dir`; links are recorded by their target.
#[cfg(unix)]
fn tree_state(dir: &Path) -> std::collections::BTreeMap<PathBuf, (Vec<u8>, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(
        base: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<PathBuf, (Vec<u8>, u64, i64, i64)>,
    ) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if md.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                let raw = target.as_os_str().as_encoded_bytes().to_vec();
                out.insert(rel, (raw, md.ino(), md.mtime(), md.mtime_nsec()));
            } else if md.is_dir() {
                out.insert(rel, (Vec::new(), md.ino(), md.mtime(), md.mtime_nsec()));
                walk(base, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(rel, (bytes, md.ino(), md.mtime(), md.mtime_nsec()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Move `path` (a directory or file of the object) to `outside` and leave a symbolic link
/// to it in its place.
#[cfg(unix)]
fn replace_with_link(path: &Path, outside: &Path) {
    fs::rename(path, outside).unwrap();
    std::os::unix::fs::symlink(outside, path).unwrap();
}

#[cfg(unix)]
fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(unix)]
#[test]
fn a_linked_parity_directory_is_not_followed_and_repair_replaces_the_link() {
    let f = damage_fixture(61);
    let originals = f.expected_shards();
    let reader = f.reader();
    // The parity directory of stripe 1 becomes a link to an outside directory holding
    // exactly the right parity bytes: were the link followed, they would verify.
    let outside = tempfile::tempdir().unwrap();
    let parity_dir = f.path(1, 3).parent().unwrap().to_path_buf();
    let target = outside.path().join("parity");
    replace_with_link(&parity_dir, &target);
    let before = tree_state(outside.path());

    for s in [3, 4] {
        let check = reader.verify_shard(1, s).unwrap();
        assert_eq!(check.damage, Some(Damage::Unreadable), "parity {s}");
    }
    // The data shards still read (no parity is needed for that).
    assert!(read_ok(&reader, &f.data, 0, f.data.len()).is_empty());

    // Repair puts real parity back inside the object, in a real directory in place of the
    // link, and writes nothing through the link.
    for s in [3, 4] {
        assert_eq!(reader.repair_shard(1, s, &mut Vec::new()).unwrap(), 4);
    }
    assert!(!is_link(&parity_dir) && parity_dir.is_dir());
    assert_stripe_restored(&f, 1, &originals[1]);
    assert_eq!(
        tree_state(outside.path()),
        before,
        "the outside directory changed"
    );
    assert_no_temporaries(&f.root);
}

#[cfg(unix)]
#[test]
fn a_linked_block_directory_is_not_followed() {
    let f = damage_fixture(62);
    let reader = f.reader();
    let outside = tempfile::tempdir().unwrap();
    // All of block 0 (every shard of stripe 0, intact) behind a link.
    let block = f.root.join("blocks/block_0");
    replace_with_link(&block, &outside.path().join("block_0"));
    let before = tree_state(outside.path());
    for s in 0..f.shard_count(0) {
        assert_eq!(
            reader.verify_shard(0, s).unwrap().damage,
            Some(Damage::Unreadable)
        );
    }
    // Stripe 0 is lost (every shard is unreadable): reads fail, never read through it.
    let err = reader.read(0, &mut [0u8; 10], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, Error::Unrecoverable { stripe: 0, .. }),
        "{err:?}"
    );
    // Other stripes are untouched.
    let start = f.start(1, 0) as usize;
    read_ok(&reader, &f.data, start as u64, f.data.len() - start);
    // Repair fails cleanly: nothing written, the link left as it was.
    for s in 0..f.shard_count(0) {
        let err = reader.repair_shard(0, s, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, Error::Unrecoverable { .. }), "{err:?}");
    }
    assert!(is_link(&block));
    assert_eq!(
        tree_state(outside.path()),
        before,
        "the outside directory changed"
    );
}

#[cfg(unix)]
#[test]
fn a_linked_shard_file_is_not_followed_and_repair_replaces_the_link() {
    let f = damage_fixture(63);
    let originals = f.expected_shards();
    let reader = f.reader();
    let outside = tempfile::tempdir().unwrap();
    // A data shard and a parity shard become links: one to a copy of its own right bytes,
    // one to a file of the user's that a repair through the link would overwrite.
    let data = f.path(1, 0);
    replace_with_link(&data, &outside.path().join("segment_0.dat"));
    let precious = outside.path().join("precious.txt");
    fs::write(&precious, b"not yours").unwrap();
    let parity = f.path(1, 4);
    fs::remove_file(&parity).unwrap();
    std::os::unix::fs::symlink(&precious, &parity).unwrap();
    let before = tree_state(outside.path());

    assert_eq!(
        reader.verify_shard(1, 0).unwrap().damage,
        Some(Damage::Unreadable)
    );
    assert_eq!(
        reader.verify_shard(1, 4).unwrap().damage,
        Some(Damage::Unreadable)
    );
    // The data shard's bytes are rebuilt from parity, and it is reported.
    let bad = read_ok(&reader, &f.data, f.start(1, 0), 1000);
    assert_eq!(
        bad,
        vec![BadShard {
            stripe: 1,
            shard: 0,
            damage: Damage::Unreadable
        }]
    );
    for s in [0, 4] {
        assert_eq!(reader.repair_shard(1, s, &mut Vec::new()).unwrap(), 4);
    }
    assert!(!is_link(&data) && !is_link(&parity));
    assert_stripe_restored(&f, 1, &originals[1]);
    assert_eq!(
        tree_state(outside.path()),
        before,
        "the outside directory changed"
    );
    assert_no_temporaries(&f.root);
}

#[cfg(unix)]
#[test]
fn links_planted_at_temporary_names_are_never_written_through() {
    let f = damage_fixture(64);
    let originals = f.expected_shards();
    let reader = f.reader();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious.txt");
    fs::write(&precious, b"not yours").unwrap();
    // The names the old repair would have used (pid and a counter from 0), all links.
    let parity = f.path(2, 3);
    let dir = parity.parent().unwrap();
    for n in 0..64 {
        let name = format!(".parity_0.dat.repair-{}-{n}", std::process::id());
        std::os::unix::fs::symlink(&precious, dir.join(name)).unwrap();
    }
    Harm::Flip(5).apply(&parity);
    let before = tree_state(outside.path());
    assert_eq!(reader.repair_shard(2, 3, &mut Vec::new()).unwrap(), 1);
    assert!(fs::read(&parity).unwrap() == originals[2][3]);
    assert_eq!(
        tree_state(outside.path()),
        before,
        "the outside directory changed"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_a_shard_is_unreadable_not_waited_on() {
    let f = damage_fixture(65);
    let originals = f.expected_shards();
    let data = f.path(1, 1);
    fs::remove_file(&data).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&data)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = std::sync::Arc::new(f.reader());
    // Run against a deadline: a reader that opened the FIFO for reading would block
    // forever (no writer), which must fail the test rather than hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::sync::Arc::clone(&reader);
    let want = f.data.clone();
    let start = f.start(1, 0);
    std::thread::spawn(move || {
        let mut out = vec![0u8; 3000];
        let mut bad = Vec::new();
        let read = worker.read(start, &mut out, &mut bad).map(|()| (out, bad));
        let check = worker.verify_shard(1, 1);
        let repaired = worker.repair_shard(1, 1, &mut Vec::new());
        let _ = tx.send((read, check, repaired));
    });
    let (read, check, repaired) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the reader blocked on a FIFO");
    let (out, bad) = read.unwrap();
    assert!(out[..] == want[start as usize..start as usize + 3000]);
    assert_eq!(
        bad,
        vec![BadShard {
            stripe: 1,
            shard: 1,
            damage: Damage::Unreadable
        }]
    );
    assert_eq!(check.unwrap().damage, Some(Damage::Unreadable));
    assert_eq!(repaired.unwrap(), 4);
    assert!(fs::symlink_metadata(&data).unwrap().is_file());
    assert_stripe_restored(&f, 1, &originals[1]);
}

#[test]
fn repair_of_a_vanished_object_creates_nothing() {
    // The object was removed (or replaced: its directory moved away) after the reader was
    // made: a repair must not re-create its directory or anything in it.
    let f = damage_fixture(66);
    let reader = f.reader();
    let away = f.root.with_extension("trashed");
    fs::rename(&f.root, &away).unwrap();
    assert_eq!(
        reader.verify_shard(1, 3).unwrap().damage,
        Some(Damage::Missing)
    );
    for s in [0, 3] {
        let err = reader.repair_shard(1, s, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, Error::ObjectGone { .. }), "{err:?}");
        assert!(err.to_string().contains("gone"), "{err}");
    }
    assert!(!f.root.exists(), "a zombie object directory was created");

    // Even with every shard readable elsewhere (a reader over the moved object), the
    // rebuilt shard has nowhere to go.
    let moved = ObjectSpec::new(&away, f.g.chunk, f.spec().stripes.clone()).unwrap();
    let shards_elsewhere = Reader::with_source(f.spec(), None, Box::new(LocalFiles::new(&moved)))
        .with_sink(Box::new(LocalFiles::new(&f.spec())));
    Harm::Delete.apply(&away.join(f.rel(1, 3)));
    let err = shards_elsewhere
        .repair_shard(1, 3, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::ObjectGone { .. }), "{err:?}");
    assert!(!f.root.exists(), "a zombie object directory was created");
}

// ---------------------------------------------------------------------------------------
// Repair reuses what a read rebuilt.

#[test]
fn repair_reuses_chunks_a_read_rebuilt() {
    use blockframe_core::cache::ChunkCache;
    use std::sync::Arc;

    let f = damage_fixture(71);
    let originals = f.expected_shards();
    let shared = Arc::new(ChunkCache::new(1 << 20));
    for reader in [
        f.reader(),
        Reader::with_cache(f.spec(), Arc::clone(&shared)),
    ] {
        // A read through a lost data shard rebuilds (and verifies) all of its chunks.
        Harm::Delete.apply(&f.path(1, 0));
        let bad = read_ok(&reader, &f.data, f.start(1, 0), 3000);
        assert_eq!(bad.len(), 1);
        let decoded = reader.decode_count();
        assert!(decoded > 0);
        // Repairing that shard writes those chunks without decoding anything again.
        assert_eq!(reader.repair_shard(1, 0, &mut Vec::new()).unwrap(), 4);
        assert_eq!(reader.decode_count(), decoded, "the repair decoded again");
        assert_stripe_restored(&f, 1, &originals[1]);
        assert_no_temporaries(&f.root);
    }

    // Without a read before it, the same repair decodes (the counter does count).
    let fresh = f.reader();
    Harm::Delete.apply(&f.path(1, 0));
    assert_eq!(fresh.repair_shard(1, 0, &mut Vec::new()).unwrap(), 4);
    assert!(fresh.decode_count() > 0);
    assert_stripe_restored(&f, 1, &originals[1]);

    // A read that rebuilt only part of the shard: the rest is decoded, the part is reused.
    let partly = f.reader();
    Harm::Delete.apply(&f.path(1, 0));
    read_ok(&partly, &f.data, f.start(1, 0), 300); // chunks 0 and 1 of 4
    let decoded = partly.decode_count();
    assert_eq!(partly.repair_shard(1, 0, &mut Vec::new()).unwrap(), 4);
    assert_eq!(
        partly.decode_count(),
        decoded + 1,
        "one decode for chunks 2..4"
    );
    assert_stripe_restored(&f, 1, &originals[1]);
}

// ---------------------------------------------------------------------------------------
// File semantics that differ between operating systems (scripts/check-windows runs these
// tests on Windows code paths under Wine).

#[test]
fn repair_of_a_shard_held_open_elsewhere_never_makes_it_worse() {
    // A mount or another process may be reading a shard while it is repaired. Unix: the
    // rename replaces the name and the reader keeps the old file. Windows: the same where
    // the file system has POSIX rename semantics (NTFS on Windows 10 1607 and later);
    // without them (FAT, exFAT, Wine) an open file cannot be replaced, and the repair must
    // then fail cleanly: the damaged shard exactly as it was, no temporary left behind.
    let f = damage_fixture(23);
    let reader = f.reader();
    let originals = f.expected_shards();
    let path = f.path(1, 0);
    Harm::Flip(300).apply(&path);
    let damaged = fs::read(&path).unwrap();
    let held = fs::File::open(&path).unwrap();
    match reader.repair_shard(1, 0, &mut Vec::new()) {
        Ok(rebuilt) => {
            assert_eq!(rebuilt, 1);
            assert!(fs::read(&path).unwrap() == originals[1][0]);
        }
        Err(e) => {
            // Only Windows refuses to replace a file that is open.
            if !cfg!(windows) {
                panic!("repair failed: {e}");
            }
            assert!(
                matches!(&e, Error::Io { path: p, .. } if p == &path),
                "{e:?}"
            );
            assert!(fs::read(&path).unwrap() == damaged);
        }
    }
    assert_no_temporaries(&f.root);
    // The handle opened before the repair still reads the file it opened.
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut old).unwrap();
    assert!(old == damaged);
    drop(held);
    // With nothing holding it, the repair completes (if it had not already).
    assert!(reader.repair_shard(1, 0, &mut Vec::new()).unwrap() <= 1);
    assert!(fs::read(&path).unwrap() == originals[1][0]);
    assert_no_temporaries(&f.root);
    read_ok(&reader, &f.data, 0, f.data.len());
}

// ---------------------------------------------------------------------------------------
// Commits of member files (packs): the object is the concatenation of many files.
// ---------------------------------------------------------------------------------------

/// `data` cut into member files of random lengths up to `max` (zero included) under
/// `dir/members`: their paths and lengths, in order.
fn write_members(dir: &Path, data: &[u8], max: u64, seed: u64) -> Vec<(PathBuf, u64)> {
    let base = dir.join("members");
    fs::create_dir_all(&base).unwrap();
    let mut rng = Rng::new(seed);
    let mut members = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        // About one member in eight is empty.
        let len = if rng.below(8) == 0 {
            0
        } else {
            (1 + rng.below(max) as usize).min(data.len() - at)
        };
        let path = base.join(format!("m{}", members.len()));
        fs::write(&path, &data[at..at + len]).unwrap();
        members.push((path, len as u64));
        at += len;
    }
    // Empty members at the very end too.
    for _ in 0..2 {
        let path = base.join(format!("m{}", members.len()));
        fs::write(&path, b"").unwrap();
        members.push((path, 0));
    }
    members
}

/// Commit `members` under `root` with `plan`, against a deadline: a commit that opened a
/// FIFO for reading would wait forever for a writer, which must fail the test, not hang it.
fn commit_members_within(
    members: &[(PathBuf, u64)],
    root: &Path,
    chunk: u64,
    plan: &[PlanStripe],
) -> Result<CommitOutput, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (members, root, plan) = (members.to_vec(), root.to_path_buf(), plan.to_vec());
    std::thread::spawn(move || {
        let roots = [(root, true)];
        let out = commit::commit_members(&members, &roots, chunk, &plan, &Progress::default());
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the commit of members finished (it did not block)")
}

#[test]
fn members_commit_to_the_same_shards_as_their_concatenation() {
    let cases = [
        // Tiny members over several stripes, many per shard and across shard boundaries.
        (
            9_000u64,
            300u64,
            Geometry {
                k: 4,
                m: 2,
                seg: 1000,
                chunk: 256,
            },
        ),
        // Members larger than shards.
        (
            20_000,
            7_000,
            Geometry {
                k: 3,
                m: 1,
                seg: 2048,
                chunk: 512,
            },
        ),
        // Shards longer than a window (1 MiB): members are read in several windows, and
        // those straddling two shards are read from both ends at once.
        (
            5 << 20,
            300_000,
            Geometry {
                k: 3,
                m: 2,
                seg: (3 << 20) / 2,
                chunk: 64 << 10,
            },
        ),
    ];
    for (ci, (size, max, g)) in cases.into_iter().enumerate() {
        let f = Fixture::new(size, g, 40 + ci as u64);
        let expected = f.expected_shards();
        let dir = tempfile::tempdir().unwrap();
        let members = write_members(dir.path(), &f.data, max, 50 + ci as u64);
        assert!(members.iter().any(|m| m.1 == 0));
        let root = dir.path().join("object");
        let progress = Progress::default();
        let out = commit::commit_members(
            &members,
            &[(root.clone(), true)],
            g.chunk,
            &f.plan,
            &progress,
        )
        .unwrap_or_else(|e| panic!("case {ci}: {e}"));
        assert_eq!(out.content_hash, f.out.content_hash, "case {ci}");
        assert_eq!(out.hashes, f.out.hashes, "case {ci}");
        assert_eq!(progress.done.load(Ordering::Relaxed), size);
        let wanted: Vec<Hash> = members
            .iter()
            .map(|(p, _)| hashing::chunk_hash(&fs::read(p).unwrap()))
            .collect();
        assert_eq!(out.member_hashes, wanted, "case {ci}");
        assert_eq!(
            out.member_hashes[members.len() - 1],
            hashing::chunk_hash(b""),
            "an empty member's hash is the hash of nothing"
        );
        assert_eq!(list_files(&root), list_files(&f.root), "case {ci}");
        for (si, st) in f.plan.iter().enumerate() {
            let paths = st
                .data
                .iter()
                .map(|d| &d.path)
                .chain(st.parity.iter().map(|p| &p.path));
            for (s, rel) in paths.enumerate() {
                assert!(
                    fs::read(root.join(rel)).unwrap() == expected[si][s],
                    "case {ci}: stripe {si} shard {s} differs"
                );
            }
        }
        // The committed object reads back as the concatenation.
        let reader = Reader::new(layout_of(&f.plan, &out, g.chunk, &root, &|_, p, len, h| {
            ShardSpec {
                path: p.to_path_buf(),
                len,
                hashes: h,
                dir: None,
            }
        }));
        read_ok(&reader, &f.data, 0, f.data.len());
    }

    // A single-file commit gives its content hash as its one member hash.
    let f = Fixture::new(
        3000,
        Geometry {
            k: 2,
            m: 1,
            seg: 1000,
            chunk: 256,
        },
        49,
    );
    assert_eq!(f.out.member_hashes, vec![f.out.content_hash]);
}

/// A member list whose 5000 bytes fill stripes of 2000 (k 2, seg 1000): members of 500
/// bytes, so member `i` is in stripe `i / 4`.
struct MemberCase {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    members: Vec<(PathBuf, u64)>,
    g: Geometry,
    plan: Vec<PlanStripe>,
}

impl MemberCase {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = Rng::new(seed).bytes(5000);
        let base = dir.path().join("members");
        fs::create_dir(&base).unwrap();
        let members = data
            .chunks(500)
            .enumerate()
            .map(|(i, bytes)| {
                let path = base.join(format!("m{i}"));
                fs::write(&path, bytes).unwrap();
                (path, bytes.len() as u64)
            })
            .collect();
        let g = Geometry {
            k: 2,
            m: 1,
            seg: 1000,
            chunk: 256,
        };
        let plan = make_plan(5000, g);
        Self {
            dir,
            data,
            members,
            g,
            plan,
        }
    }

    /// Commit with member `bad` spoiled by `spoil`; the commit must fail with
    /// `SourceChanged` naming that member, leaving no shard of its stripe or a later one
    /// and only complete shards of earlier stripes.
    fn fails_at(&self, bad: usize, what: &str, spoil: impl FnOnce(&Path)) {
        let path = self.members[bad].0.clone();
        spoil(&path);
        let root = self.dir.path().join(format!("object-{what}"));
        let err =
            commit_members_within(&self.members, &root, self.g.chunk, &self.plan).unwrap_err();
        assert!(
            matches!(&err, Error::SourceChanged { path: p } if p == &path),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().contains(&*path.to_string_lossy()),
            "{what}: {err}"
        );
        self.only_whole_stripes_before(&root, bad / 4, what);
    }

    /// Only shards of stripes before `stripe` are under `root`, each complete.
    fn only_whole_stripes_before(&self, root: &Path, stripe: usize, what: &str) {
        let f = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            source: PathBuf::new(),
            root: PathBuf::new(),
            data: self.data.clone(),
            g: self.g,
            plan: self.plan.clone(),
            out: CommitOutput {
                content_hash: [0; 32],
                hashes: Vec::new(),
                member_hashes: Vec::new(),
            },
            done: 0,
        };
        let expected = f.expected_shards();
        let mut allowed = BTreeSet::new();
        for st in &self.plan[..stripe] {
            allowed.extend(st.data.iter().map(|d| d.path.clone()));
            allowed.extend(st.parity.iter().map(|p| p.path.clone()));
        }
        let left = files_under(root);
        assert!(left.is_subset(&allowed), "{what}: {left:?}");
        for (si, st) in self.plan[..stripe].iter().enumerate() {
            let paths = st
                .data
                .iter()
                .map(|d| &d.path)
                .chain(st.parity.iter().map(|p| &p.path));
            for (s, rel) in paths.enumerate() {
                if let Ok(bytes) = fs::read(root.join(rel)) {
                    assert!(bytes == expected[si][s], "{what}: a partial shard {rel:?}");
                }
            }
        }
    }
}

#[test]
fn members_of_the_wrong_length_or_missing_fail_the_commit() {
    let case = MemberCase::new(60);
    // Longer and shorter than listed, in the second stripe; then missing, in the third.
    case.fails_at(5, "longer", |p| {
        let mut bytes = fs::read(p).unwrap();
        bytes.push(0);
        fs::write(p, bytes).unwrap();
    });
    let case = MemberCase::new(61);
    case.fails_at(6, "shorter", |p| {
        let bytes = fs::read(p).unwrap();
        fs::write(p, &bytes[..499]).unwrap();
    });
    let case = MemberCase::new(62);
    case.fails_at(9, "missing", |p| fs::remove_file(p).unwrap());
    // A directory in place of a member.
    let case = MemberCase::new(63);
    case.fails_at(0, "directory", |p| {
        fs::remove_file(p).unwrap();
        fs::create_dir(p).unwrap();
    });

    // Lengths that do not add up to the plan: the caller's mistake, found before anything
    // is written.
    let mut case = MemberCase::new(64);
    case.members[3].1 = 499;
    let root = case.dir.path().join("object");
    let err = commit_members_within(&case.members, &root, case.g.chunk, &case.plan).unwrap_err();
    assert!(matches!(err, Error::Layout(_)), "{err:?}");
    assert!(!root.exists());
}

#[cfg(unix)]
#[test]
fn a_link_or_fifo_member_fails_the_commit_without_being_followed_or_waited_on() {
    // A link to a file with exactly the bytes expected: still refused, never followed.
    let case = MemberCase::new(66);
    let target = case.dir.path().join("target");
    fs::copy(&case.members[4].0, &target).unwrap();
    case.fails_at(4, "link", |p| {
        fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink(&target, p).unwrap();
    });
    // A FIFO (with no writer: opening it for reading without O_NONBLOCK would block).
    let case = MemberCase::new(67);
    case.fails_at(2, "fifo", |p| {
        fs::remove_file(p).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(made.success());
    });
}

#[test]
fn a_member_changing_during_the_commit_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry {
        k: 4,
        m: 2,
        seg: 1 << 20,
        chunk: 64 << 10,
    };
    let data = Rng::new(68).bytes(12 << 20);
    let members = write_members(dir.path(), &data, 2 << 20, 69);
    let plan = make_plan(data.len() as u64, g);
    // Keep changing the modification time of a member in the middle (its length stays
    // right) until the commit ends: its open-to-read-back window always sees a change.
    let bad = members
        .iter()
        .position(|m| m.1 > (1 << 20))
        .expect("a large member");
    let path = members[bad].0.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (path, stop) = (path.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            while !stop.load(Ordering::Relaxed) {
                t += Duration::from_secs(1);
                file.set_modified(t).unwrap();
            }
        })
    };
    let root = dir.path().join("object");
    let out = commit_members_within(&members, &root, g.chunk, &plan);
    stop.store(true, Ordering::Relaxed);
    toucher.join().unwrap();
    let err = out.unwrap_err();
    assert!(
        matches!(&err, Error::SourceChanged { path: p } if p == &path),
        "{err:?}"
    );
}
