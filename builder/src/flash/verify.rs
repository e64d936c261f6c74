//! Reading back: after a sync, the page cache is dropped so the bytes come from the medium,
//! and every mapped range is hashed and compared with the block map (or, without a map,
//! the whole image with the hash taken while writing). The first MiB is not on the target
//! yet: its bytes come from memory, where they were checked on the way in.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::error::FlashError;
use super::events::{Meter, Phase, Sink};
use super::source::Image;
use super::target::{AlignedBuf, Target};
use super::writer::{Stop, Written, CHUNK, HOLD};

/// One range to check: bytes [start, end), blocks first..=last of the block map.
struct Span {
    start: u64,
    end: u64,
    first: u64,
    last: u64,
}

/// Buffers in flight between the reading thread and the hashing one.
const BUFFERS: usize = 3;

/// The reading side: the target's bytes of every span, from `HOLD` on, in order.
fn read_spans(
    target: &mut dyn Target,
    spans: &[Span],
    tx: SyncSender<(usize, AlignedBuf)>,
    pool: Receiver<AlignedBuf>,
) -> Result<(), Stop> {
    let mut allocated = 0;
    for sp in spans {
        let mut pos = sp.start.max(HOLD);
        while pos < sp.end {
            let mut buf = match pool.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < BUFFERS => {
                    allocated += 1;
                    AlignedBuf::new(CHUNK)
                }
                Err(_) => match pool.recv() {
                    Ok(b) => b,
                    Err(_) => return Ok(()), // the checker stopped: it has the error
                },
            };
            let n = (sp.end - pos).min(CHUNK as u64) as usize;
            target
                .read_at(pos, &mut buf.bytes_mut()[..n])
                .map_err(|e| (pos, FlashError::ReadBack { offset: pos, len: n, source: e }))?;
            if tx.send((n, buf)).is_err() {
                return Ok(());
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// The hashing side: each span's sha256 from the head (below `HOLD`) and the chunks read.
/// `Ok(None)` if the reader stopped early (its own result says why).
fn check_spans(
    spans: &[Span],
    expected: &dyn Fn(usize, [u8; 32]) -> bool,
    head: &[u8],
    rx: Receiver<(usize, AlignedBuf)>,
    pool: Sender<AlignedBuf>,
    meter: &mut Meter,
) -> Result<Option<()>, Stop> {
    for (i, sp) in spans.iter().enumerate() {
        let mut h = Sha256::new();
        let mut pos = sp.start;
        if pos < HOLD {
            let e = sp.end.min(HOLD).min(head.len() as u64);
            h.update(&head[pos as usize..e as usize]);
            meter.add(e - pos);
            pos = sp.end.min(HOLD);
        }
        while pos < sp.end {
            let Ok((n, buf)) = rx.recv() else { return Ok(None) };
            h.update(&buf.bytes()[..n]);
            meter.add(n as u64);
            pos += n as u64;
            let _ = pool.send(buf);
        }
        if !expected(i, h.finalize().into()) {
            let e = FlashError::Mismatch { first: sp.first, last: sp.last, offset: sp.start, end: sp.end };
            return Err((sp.start, e));
        }
    }
    Ok(Some(()))
}

/// Check what was written against the image's checksums; returns the bytes read back.
pub fn verify(image: &Image, written: &Written, target: &mut dyn Target, sink: &dyn Sink) -> Result<u64, Stop> {
    target.sync().map_err(|e| (0, FlashError::Sync(e)))?;
    if let Err(e) = target.drop_cache() {
        tracing::debug!("posix_fadvise(DONTNEED) on {}: {e}", target.name().display());
    }
    let (spans, sums): (Vec<Span>, Vec<Option<[u8; 32]>>) = match &image.bmap {
        Some(b) => b
            .ranges
            .iter()
            .map(|r| {
                let (s, l) = b.range_bytes(r);
                let sum = hex::decode(&r.sha256).ok().and_then(|v| <[u8; 32]>::try_from(v).ok());
                (Span { start: s, end: s + l, first: r.first, last: r.last }, sum)
            })
            .unzip(),
        None => {
            let size = written.image_size;
            let last = size.div_ceil(crate::bmap::BLOCK).saturating_sub(1);
            (vec![Span { start: 0, end: size, first: 0, last }], vec![written.whole_sha256])
        }
    };
    let total = spans.iter().map(|s| s.end - s.start).sum();
    let mut m = Meter::start(sink, Phase::Verify, Some(total));
    let expected = |i: usize, got: [u8; 32]| sums[i] == Some(got);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(BUFFERS - 1);
        let (pool_tx, pool_rx) = mpsc::channel();
        let spans = &spans;
        let reader = scope.spawn(move || read_spans(target, spans, tx, pool_rx));
        let checked = check_spans(spans, &expected, &written.head, rx, pool_tx, &mut m);
        let read = reader.join().unwrap_or_else(|_| Err((0, FlashError::Sync(std::io::Error::other("panic")))));
        match (checked, read) {
            (Err(stop), _) | (_, Err(stop)) => Err(stop),
            (Ok(Some(())), Ok(())) => Ok(()),
            (Ok(None), Ok(())) => Err((0, FlashError::Sync(std::io::Error::other("the read-back stopped early")))),
        }
    })?;
    let done = m.done;
    m.finish();
    Ok(done)
}
