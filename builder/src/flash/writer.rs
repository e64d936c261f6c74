//! Writing: one thread decompresses the image and checks each block-map range's sha256 as
//! the data goes by; the calling thread writes large aligned pieces of the mapped ranges.
//! The first MiB (protective MBR and primary GPT) is kept in memory and written last, so a
//! card that was not completely written and checked never looks like a disk.

use std::sync::mpsc::{self, Receiver, SyncSender};

use sha2::{Digest, Sha256};

use super::error::FlashError;
use super::events::{Meter, Phase, Sink};
use super::source::{Image, Stream};
use super::target::{AlignedBuf, Target};
use crate::bmap::Bmap;

/// Held back until everything else is written and checked.
pub const HOLD: u64 = 1 << 20;
/// Largest single write (and read); pieces end on multiples of it.
pub const CHUNK: usize = 8 << 20;
/// Gaps between mapped ranges up to this size are written too (they are zeros in the image):
/// one large write costs a flash card less than two small ones.
pub const GAP: u64 = 128 << 10;
/// Buffers in flight between the decompressing thread and the writer.
const BUFFERS: usize = 4;

/// What the writing phase leaves for verification and finalizing.
#[derive(Debug)]
pub struct Written {
    /// The image's first MiB (or less for a smaller image): not yet on the target.
    pub head: Vec<u8>,
    pub image_size: u64,
    /// Bytes taken from the image and written (the head included).
    pub bytes_written: u64,
    /// sha256 of the whole image, when there is no block map to check ranges against.
    pub whole_sha256: Option<[u8; 32]>,
}

/// A failure, with the offset up to which the target had been written in order.
pub type Stop = (u64, FlashError);

/// Byte ranges to write, in order: the first MiB in full, then the mapped ranges (merged
/// across small gaps); everything when there is no block map.
pub fn extents(bmap: Option<&Bmap>, size: Option<u64>) -> Vec<(u64, u64)> {
    let Some(b) = bmap else {
        return vec![(0, size.unwrap_or(u64::MAX))];
    };
    let mut v: Vec<(u64, u64)> = vec![(0, HOLD.min(b.image_size))];
    for r in &b.ranges {
        let (s, l) = b.range_bytes(r);
        match v.last_mut() {
            Some(last) if s <= last.1 + GAP => last.1 = last.1.max(s + l),
            _ => v.push((s, s + l)),
        }
    }
    v
}

/// Checks each block-map range's sha256 as the bytes stream past, in order.
pub struct RangeChecker<'a> {
    bmap: &'a Bmap,
    next: usize,
    hasher: Sha256,
}

impl<'a> RangeChecker<'a> {
    pub fn new(bmap: &'a Bmap) -> Self {
        RangeChecker { bmap, next: 0, hasher: Sha256::new() }
    }

    /// Feed the image bytes at `offset`. Bytes outside every range are ignored.
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let end = offset + data.len() as u64;
        while let Some(r) = self.bmap.ranges.get(self.next) {
            let (rs, rl) = self.bmap.range_bytes(r);
            let re = rs + rl;
            if rs >= end {
                break;
            }
            let a = offset.max(rs);
            let b = end.min(re);
            if a < b {
                self.hasher.update(&data[(a - offset) as usize..(b - offset) as usize]);
            }
            if b < re {
                break;
            }
            let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
            if !got.eq_ignore_ascii_case(&r.sha256) {
                return Err(FlashError::Corrupt {
                    first: r.first,
                    last: r.last,
                    offset: rs,
                    expected: r.sha256.clone(),
                    got,
                });
            }
            self.next += 1;
        }
        Ok(())
    }

    pub fn all_checked(&self) -> bool {
        self.next == self.bmap.ranges.len()
    }
}

struct Piece {
    offset: u64,
    len: usize,
    buf: AlignedBuf,
}

/// The decompressing side: reads the extents from the stream into pieces.
fn produce(
    image: &Image,
    mut stream: Stream,
    tx: SyncSender<Piece>,
    pool: Receiver<AlignedBuf>,
) -> Result<(u64, Option<[u8; 32]>), FlashError> {
    let mut checker = image.bmap.as_ref().map(RangeChecker::new);
    let mut whole = image.bmap.is_none().then(Sha256::new);
    let mut allocated = 0;
    let gone = || FlashError::Sync(std::io::Error::other("the writer stopped"));
    for (start, end) in extents(image.bmap.as_ref(), image.size) {
        if !stream.skip_to(start)? {
            return Err(FlashError::Truncated { expected: end, got: stream.pos() });
        }
        let mut off = start;
        while off < end {
            let mut buf = match pool.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < BUFFERS => {
                    allocated += 1;
                    AlignedBuf::new(CHUNK)
                }
                Err(_) => pool.recv().map_err(|_| gone())?,
            };
            let want = (CHUNK as u64 - off % CHUNK as u64).min(end - off) as usize;
            let got = stream.read_full(&mut buf.bytes_mut()[..want])?;
            let data = &buf.bytes()[..got];
            if let Some(c) = checker.as_mut() {
                c.feed(off, data)?;
            }
            if let Some(h) = whole.as_mut() {
                h.update(data);
            }
            if got > 0 {
                tx.send(Piece { offset: off, len: got, buf }).map_err(|_| gone())?;
            }
            off += got as u64;
            if got < want {
                if image.size.is_none() && image.bmap.is_none() {
                    break; // unknown size: the end of the stream is the end of the image
                }
                return Err(FlashError::Truncated { expected: end, got: off });
            }
        }
    }
    let size = stream.finish()?;
    if let Some(expected) = image.size.filter(|&e| e != size) {
        return Err(FlashError::SizeMismatch { expected, got: size });
    }
    if checker.is_some_and(|c| !c.all_checked()) {
        return Err(FlashError::Truncated { expected: image.size.unwrap_or(0), got: size });
    }
    Ok((size, whole.map(|h| h.finalize().into())))
}

/// Zero the first MiB: the old partition table goes first, and again after a failure.
pub fn wipe_head(target: &mut dyn Target, image_size: Option<u64>) -> std::io::Result<()> {
    let len = HOLD.min(target.capacity().or(image_size).unwrap_or(HOLD)) as usize;
    let zeros = AlignedBuf::new(HOLD as usize);
    target.write_at(0, &zeros.bytes()[..len])?;
    target.sync()
}

/// Before writing: wipe the old partition table at the start, and at the end of a device
/// larger than the image (an old backup GPT there could otherwise bring an old layout back).
fn wipe_old_tables(target: &mut dyn Target, image_size: Option<u64>, sink: &dyn Sink) -> Result<(), Stop> {
    let Some(cap) = target.capacity() else {
        return Ok(()); // a regular file was emptied by prepare()
    };
    let m = Meter::start(sink, Phase::Wipe, None);
    wipe_head(target, image_size).map_err(|e| (0, FlashError::Write { offset: 0, len: HOLD as usize, source: e }))?;
    if image_size.is_some_and(|s| cap >= 2 * HOLD && cap - HOLD >= s.max(HOLD)) {
        let zeros = AlignedBuf::new(HOLD as usize);
        target
            .write_at(cap - HOLD, zeros.bytes())
            .map_err(|e| (0, FlashError::Write { offset: cap - HOLD, len: HOLD as usize, source: e }))?;
        target.sync().map_err(|e| (0, FlashError::Sync(e)))?;
    }
    m.finish();
    Ok(())
}

/// Write the image to the target, all but the first MiB, and sync.
pub fn write(image: &Image, stream: Stream, target: &mut dyn Target, sink: &dyn Sink) -> Result<Written, Stop> {
    target.prepare(image.size).map_err(|e| (0, FlashError::Write { offset: 0, len: 0, source: e }))?;
    wipe_old_tables(target, image.size, sink)?;
    let total = match &image.bmap {
        Some(b) => Some(extents(Some(b), image.size).iter().map(|(s, e)| e - s).sum()),
        None => image.size,
    };
    let capacity = target.capacity();
    let mut meter = Meter::start(sink, Phase::Write, total);
    let mut head = vec![0u8; HOLD.min(image.size.unwrap_or(HOLD)) as usize];
    let mut reached = 0u64;

    let result = std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Piece>(BUFFERS - 2);
        let (pool_tx, pool_rx) = mpsc::channel::<AlignedBuf>();
        let producer = scope.spawn(move || produce(image, stream, tx, pool_rx));
        let consumed = (|| -> Result<(), Stop> {
            for p in rx.iter() {
                let data = &p.buf.bytes()[..p.len];
                let end = p.offset + p.len as u64;
                if let Some(cap) = capacity.filter(|&c| end > c) {
                    return Err((reached, FlashError::NoRoom { capacity: cap }));
                }
                let (mut o, mut d) = (p.offset, data);
                if o < HOLD {
                    if head.len() < end.min(HOLD) as usize {
                        head.resize(end.min(HOLD) as usize, 0);
                    }
                    let k = (HOLD - o).min(d.len() as u64) as usize;
                    head[o as usize..o as usize + k].copy_from_slice(&d[..k]);
                    o += k as u64;
                    d = &d[k..];
                }
                if !d.is_empty() {
                    target.write_at(o, d).map_err(|e| (o, FlashError::Write { offset: o, len: d.len(), source: e }))?;
                }
                reached = end;
                meter.add(p.len as u64);
                let _ = pool_tx.send(p.buf);
            }
            Ok(())
        })();
        drop(rx);
        drop(pool_tx);
        let produced = producer.join().unwrap_or_else(|_| Err(FlashError::Sync(std::io::Error::other("panic"))));
        match (consumed, produced) {
            (Err(stop), _) => Err(stop),
            (Ok(()), Err(e)) => Err((reached, e)),
            (Ok(()), Ok(v)) => Ok(v),
        }
    });
    let (image_size, whole_sha256) = result?;
    target.sync().map_err(|e| (reached, FlashError::Sync(e)))?;
    let bytes_written = meter.done;
    meter.finish();
    head.truncate(HOLD.min(image_size) as usize);
    Ok(Written { head, image_size, bytes_written, whole_sha256 })
}

/// Last step: write the first MiB, sync, read it back from the medium and compare.
pub fn finalize(head: &[u8], target: &mut dyn Target, sink: &dyn Sink) -> Result<(), Stop> {
    let mut m = Meter::start(sink, Phase::Finalize, Some(head.len() as u64));
    let mut buf = AlignedBuf::new(HOLD as usize);
    buf.bytes_mut()[..head.len()].copy_from_slice(head);
    let w = |e| (0, FlashError::Write { offset: 0, len: head.len(), source: e });
    target.write_at(0, &buf.bytes()[..head.len()]).map_err(w)?;
    target.sync().map_err(|e| (0, FlashError::Sync(e)))?;
    let _ = target.drop_cache();
    let mut back = vec![0u8; head.len()];
    target.read_at(0, &mut back).map_err(|e| (0, FlashError::ReadBack { offset: 0, len: head.len(), source: e }))?;
    if back != head {
        return Err((0, FlashError::HeadMismatch));
    }
    m.add(head.len() as u64);
    m.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmap::{Range, BLOCK};

    fn bmap(ranges: &[(u64, u64)], data: &[u8]) -> Bmap {
        let mut b = Bmap { image_size: data.len() as u64, block_size: BLOCK, ranges: vec![] };
        for &(first, last) in ranges {
            let mut r = Range { first, last, sha256: String::new() };
            let (s, l) = b.range_bytes(&r);
            r.sha256 = hex::encode(Sha256::digest(&data[s as usize..(s + l) as usize]));
            b.ranges.push(r);
        }
        b
    }

    #[test]
    fn extents_hold_the_head_and_merge_small_gaps() {
        let data = vec![1u8; 4000 * BLOCK as usize];
        let b = bmap(&[(0, 0), (280, 281), (310, 311), (1000, 1999)], &data);
        assert_eq!(extents(Some(&b), None), vec![(0, 312 * BLOCK), (1000 * BLOCK, 2000 * BLOCK)]);
        assert_eq!(extents(None, Some(5)), vec![(0, 5)]);
    }

    #[test]
    fn checker_accepts_any_split_and_catches_a_flipped_byte() {
        let data: Vec<u8> = (0..40 * BLOCK).map(|i| (i * 7 % 256) as u8).collect();
        let b = bmap(&[(1, 3), (10, 10), (20, 39)], &data);
        for step in [1000usize, 4096, 7777, data.len()] {
            let mut c = RangeChecker::new(&b);
            for (i, chunk) in data.chunks(step).enumerate() {
                c.feed((i * step) as u64, chunk).unwrap();
            }
            assert!(c.all_checked(), "step {step}");
        }
        let mut bad = data.clone();
        bad[10 * BLOCK as usize + 5] ^= 1;
        let mut c = RangeChecker::new(&b);
        let e = c.feed(0, &bad).unwrap_err();
        assert!(matches!(e, FlashError::Corrupt { first: 10, last: 10, .. }), "{e}");
    }
}
