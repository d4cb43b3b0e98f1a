//! Reed-Solomon encoding and reconstruction on `reed-solomon-simd`.
//!
//! Every call works on one *range* of a stripe: `k` data slices and `m` parity slices of the
//! same length, a multiple of 64 bytes. Reed-Solomon works position by position, so encoding
//! or decoding any 64-byte-aligned range of a stripe gives exactly that range of the whole
//! result (proven by `tests/core.rs`). Callers pad short data shards with zeros in memory.

use std::cell::RefCell;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::{Error, Result};

/// Alignment every encoded range must have.
pub const ALIGN: usize = 64;

thread_local! {
    // The encoder and decoder own sizeable work buffers; keep one per thread and reset it.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

fn codec_err(e: reed_solomon_simd::Error) -> Error {
    Error::Codec(e.to_string())
}

fn check_geometry(k: usize, m: usize, len: usize) -> Result<()> {
    if k == 0 || m == 0 {
        return Err(Error::Layout(format!(
            "need at least one data and one parity shard, got {k}+{m}"
        )));
    }
    if !ReedSolomonEncoder::supports(k, m) {
        return Err(Error::Layout(format!("unsupported geometry {k}+{m}")));
    }
    if len == 0 || len % ALIGN != 0 {
        return Err(Error::Layout(format!(
            "range length {len} is not a positive multiple of {ALIGN}"
        )));
    }
    Ok(())
}

/// Encode `data` (k slices of equal length) into `parity` (m buffers, resized to that length).
pub fn encode(data: &[&[u8]], parity: &mut [Vec<u8>]) -> Result<()> {
    let k = data.len();
    let m = parity.len();
    let len = data.first().map_or(0, |d| d.len());
    check_geometry(k, m, len)?;
    if data.iter().any(|d| d.len() != len) {
        return Err(Error::Layout("data slices differ in length".into()));
    }
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let enc = match slot.as_mut() {
            Some(enc) => {
                enc.reset(k, m, len).map_err(codec_err)?;
                enc
            }
            None => slot.insert(ReedSolomonEncoder::new(k, m, len).map_err(codec_err)?),
        };
        for d in data {
            enc.add_original_shard(d).map_err(codec_err)?;
        }
        let result = enc.encode().map_err(codec_err)?;
        for (out, rec) in parity.iter_mut().zip(result.recovery_iter()) {
            out.clear();
            out.extend_from_slice(rec);
        }
        Ok(())
    })
}

/// Rebuild the missing data slices of one range.
///
/// `shards` has `k + m` entries (data first, then parity); `None` marks a slice that is
/// missing or failed verification. Returns the `k` data slices, with present ones copied
/// and missing ones decoded. Fails if fewer than `k` slices are present.
pub fn reconstruct(k: usize, shards: &[Option<&[u8]>]) -> Result<Vec<Vec<u8>>> {
    let m = shards.len().saturating_sub(k);
    let len = shards.iter().flatten().map(|s| s.len()).next().unwrap_or(0);
    check_geometry(k, m, len)?;
    if shards.iter().flatten().any(|s| s.len() != len) {
        return Err(Error::Layout("shard slices differ in length".into()));
    }
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < k {
        return Err(Error::Codec(format!(
            "{present} shards present, {k} needed"
        )));
    }
    let mut out: Vec<Vec<u8>> = shards[..k]
        .iter()
        .map(|s| s.map(<[u8]>::to_vec).unwrap_or_default())
        .collect();
    if shards[..k].iter().all(Option::is_some) {
        return Ok(out);
    }
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dec = match slot.as_mut() {
            Some(dec) => {
                dec.reset(k, m, len).map_err(codec_err)?;
                dec
            }
            None => slot.insert(ReedSolomonDecoder::new(k, m, len).map_err(codec_err)?),
        };
        for (i, s) in shards[..k].iter().enumerate() {
            if let Some(s) = s {
                dec.add_original_shard(i, s).map_err(codec_err)?;
            }
        }
        // Only as many parity slices as needed: each one added costs decoding work.
        let missing = shards[..k].iter().filter(|s| s.is_none()).count();
        for (j, s) in shards[k..]
            .iter()
            .enumerate()
            .filter_map(|(j, s)| s.map(|s| (j, s)))
            .take(missing)
        {
            dec.add_recovery_shard(j, s).map_err(codec_err)?;
        }
        let result = dec.decode().map_err(codec_err)?;
        for (i, data) in result.restored_original_iter() {
            out[i] = data.to_vec();
        }
        Ok::<(), Error>(())
    })?;
    if out.iter().any(|d| d.len() != len) {
        return Err(Error::Codec(
            "decoder did not restore every missing shard".into(),
        ));
    }
    Ok(out)
}
