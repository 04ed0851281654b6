//! Decompressing one stored chunk (one zstd frame) in cache-sized pieces.
//!
//! Restore used to decompress a whole 1 MiB chunk, hash it, then write it: three passes over
//! a buffer as big as a core's L2 cache, so the last two read it back from memory. The
//! kernel's copy into the page cache alone took four times what it takes `tar -x` (perf on
//! the 1 GiB benchmark). Decoding into a 128 KiB buffer and hashing and writing each piece
//! while it is still in cache makes every pass after the first a cache hit.

use anyhow::{Context, Result};
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// Why a chunk could not be unpacked. Kept apart so that a full disk is never reported as a
/// damaged snapshot.
#[derive(Debug)]
pub enum UnpackError {
    /// The stored frame is damaged: says how, to follow "a chunk of <file> ".
    Damaged(String),
    /// Anything else: the sink (the file being restored) or the decoder itself failed.
    Other(anyhow::Error),
}

/// zstd's own recommended output size for streaming (one full block).
const PIECE: usize = 128 << 10;

/// 4 MiB: twice the largest window a chunk's frame can have (see `ChunkDecoder::new`).
const WINDOW_LOG_MAX: u32 = 22;

pub struct ChunkDecoder {
    dec: Decoder<'static>,
    buf: Vec<u8>,
}

impl ChunkDecoder {
    pub fn new() -> Result<Self> {
        let mut dec = Decoder::new().context("could not create a zstd decoder")?;
        // Chunks hold at most 1 MiB, so their frames never need a window above 2^20; a
        // damaged or crafted frame asking for more is refused instead of making each
        // restore worker allocate up to zstd's default limit of 128 MiB.
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .context("could not limit the zstd window")?;
        Ok(ChunkDecoder {
            dec,
            buf: vec![0; PIECE],
        })
    }

    /// Decode the single frame `frame`, which must expand to exactly `len` bytes, handing
    /// each piece to `sink`. Returns the BLAKE3 hash of the whole output. The frame is
    /// rejected (before more than `len` bytes reach `sink`) when it is corrupt, truncated,
    /// followed by trailing bytes, or expands to another length.
    pub fn decode(
        &mut self,
        frame: &[u8],
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<blake3::Hash, UnpackError> {
        use UnpackError::Damaged;
        self.dec.reinit().map_err(|e| {
            UnpackError::Other(anyhow::anyhow!("could not reset the zstd decoder: {e}"))
        })?;
        let mut input = InBuffer::around(frame);
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        loop {
            let (hint, n) = {
                let mut out = OutBuffer::around(&mut self.buf[..]);
                let hint = self
                    .dec
                    .run(&mut input, &mut out)
                    .map_err(|e| Damaged(format!("does not decompress ({e})")))?;
                (hint, out.pos())
            };
            total += n as u64;
            if total > len {
                return Err(Damaged(format!(
                    "expands past its recorded length of {len} bytes"
                )));
            }
            if n > 0 {
                let piece = &self.buf[..n];
                hasher.update(piece);
                sink(piece).map_err(UnpackError::Other)?;
            }
            if hint == 0 {
                break; // the frame is complete and flushed
            }
            if n == 0 && input.pos() == frame.len() {
                return Err(Damaged("is truncated".into()));
            }
        }
        if input.pos() != frame.len() {
            return Err(Damaged(format!(
                "has {} bytes after its end",
                frame.len() - input.pos()
            )));
        }
        if total != len {
            return Err(Damaged(format!(
                "expands to {total} bytes, not the recorded {len}"
            )));
        }
        Ok(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    fn run(frame: &[u8], len: u64) -> Result<(Vec<u8>, blake3::Hash), String> {
        let mut d = ChunkDecoder::new().unwrap();
        let mut out = Vec::new();
        match d.decode(frame, len, |p| {
            out.extend_from_slice(p);
            Ok(())
        }) {
            Ok(h) => Ok((out, h)),
            Err(UnpackError::Damaged(why)) => Err(why),
            Err(UnpackError::Other(e)) => panic!("sink failed: {e:#}"),
        }
    }

    #[test]
    fn round_trips_in_pieces_with_the_whole_hash() {
        for n in [0, 1, PIECE - 1, PIECE, PIECE + 1, 1 << 20] {
            let data = sample(n);
            let frame = zstd::bulk::compress(&data, 3).unwrap();
            let (out, h) = run(&frame, n as u64).unwrap();
            assert_eq!(out, data, "size {n}");
            assert_eq!(h, blake3::hash(&data), "size {n}");
        }
    }

    #[test]
    fn one_decoder_serves_many_frames() {
        let mut d = ChunkDecoder::new().unwrap();
        for n in [5000, 300_000, 17] {
            let data = sample(n);
            let frame = zstd::bulk::compress(&data, 1).unwrap();
            let h = d.decode(&frame, n as u64, |_| Ok(())).unwrap();
            assert_eq!(h, blake3::hash(&data));
        }
    }

    #[test]
    fn damage_is_refused() {
        let data = sample(400_000);
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let e = run(&frame[..frame.len() - 10], 400_000).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = run(&frame, 399_999).unwrap_err();
        assert!(e.contains("past its recorded length"), "{e}");
        let e = run(&frame, 400_001).unwrap_err();
        assert!(e.contains("not the recorded"), "{e}");
        let mut extra = frame.clone();
        extra.extend_from_slice(b"junk");
        let e = run(&extra, 400_000).unwrap_err();
        assert!(e.contains("after its end"), "{e}");
        let mut flipped = frame.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        // Either zstd notices, or the content differs and so does the hash.
        if let Ok((_, h)) = run(&flipped, 400_000) {
            assert_ne!(h, blake3::hash(&data));
        }
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        // Streamed with no size known up front, the frame header declares the 64 MiB
        // window it was compressed with (the default limit, 2^27, would accept it).
        let data = sample(300_000);
        let mut enc = zstd::stream::raw::Encoder::new(3).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(26))
            .unwrap();
        let mut frame = vec![0u8; 400_000];
        let mut out = OutBuffer::around(&mut frame[..]);
        let mut inp = InBuffer::around(&data[..]);
        enc.run(&mut inp, &mut out).unwrap();
        while enc.finish(&mut out, true).unwrap() != 0 {}
        let n = out.pos();
        frame.truncate(n);
        let e = run(&frame, 300_000).unwrap_err();
        assert!(e.contains("does not decompress"), "{e}");
        // Within the limit it decodes.
        let ok = zstd::bulk::compress(&data, 19).unwrap();
        assert_eq!(run(&ok, 300_000).unwrap().0, data);
    }

    #[test]
    fn a_failing_sink_is_not_damage() {
        let data = sample(300_000);
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let mut d = ChunkDecoder::new().unwrap();
        let r = d.decode(&frame, 300_000, |_| {
            anyhow::bail!("No space left on device")
        });
        assert!(matches!(r, Err(UnpackError::Other(_))), "{r:?}");
    }
}
