//! Large cluster frames travel in pieces (`vaultvec.cluster.v1.Chunk`), so that one tenant's
//! megabytes do not hold up every other tenant's frames on the one WebSocket between a worker and
//! the coordinator: the sender puts other frames between the pieces, the receiver puts them back
//! together with [`Reassembly`], bounded in bytes per frame and in all.

use std::collections::{HashMap, HashSet, VecDeque};

use prost::Message as _;
use prost::bytes::Bytes;

use crate::vaultvec::cluster::v1 as cluster;

/// Frames above this many bytes are sent in pieces of at most this many bytes of frame.
pub const CHUNK_BYTES: usize = 64 << 10;

/// The encoded chunk envelopes that carry `frame` (an encoded envelope for `request_id`), in
/// order. A frame of at most [`CHUNK_BYTES`] is not split: it comes back whole, as the one item.
pub fn split(request_id: u64, frame: Vec<u8>) -> Vec<Vec<u8>> {
    if frame.len() <= CHUNK_BYTES {
        return vec![frame];
    }
    let frame = Bytes::from(frame);
    let pieces = frame.len().div_ceil(CHUNK_BYTES);
    (0..pieces)
        .map(|i| {
            let end = ((i + 1) * CHUNK_BYTES).min(frame.len());
            cluster::Envelope {
                request_id,
                deadline_unix_ms: 0,
                body: Some(cluster::envelope::Body::Chunk(cluster::Chunk {
                    data: frame.slice(i * CHUNK_BYTES..end),
                    last: i + 1 == pieces,
                })),
            }
            .encode_to_vec()
        })
        .collect()
}

/// Large frames waiting to go out in pieces, one piece of each in turn, so two large answers
/// share the connection and neither waits for all of the other.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<VecDeque<Vec<u8>>>,
}

impl Outbox {
    /// Queues the pieces of a frame, cut already by [`split`].
    pub fn push_pieces(&mut self, pieces: Vec<Vec<u8>>) {
        if !pieces.is_empty() {
            self.frames.push_back(pieces.into());
        }
    }

    /// The next piece to send.
    pub fn next_piece(&mut self) -> Option<Vec<u8>> {
        let mut pieces = self.frames.pop_front()?;
        let piece = pieces.pop_front();
        if !pieces.is_empty() {
            self.frames.push_back(pieces);
        }
        piece
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Refused request ids remembered by a [`Reassembly`].
const MAX_REFUSED: usize = 4096;

/// Just the request id and the chunk of an envelope; any other body is skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
struct ChunkEnvelope {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(message, optional, tag = "26")]
    chunk: Option<cluster::Chunk>,
}

/// What [`Reassembly::offer`] made of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Not a chunk: handle the frame as it is.
    Frame,
    /// A chunk of a frame not yet complete (or of one already refused, dropped).
    Pending,
    /// The last chunk: here is the whole frame.
    Whole(Vec<u8>),
    /// The frame of this request id would pass the limit; its pieces are dropped, and so will be
    /// the rest of them.
    TooLarge(u64),
}

/// Frames being put back together, by request id.
#[derive(Debug)]
pub struct Reassembly {
    partial: HashMap<u64, Vec<u8>>,
    /// Request ids whose frame was refused, until their last piece (at most [`MAX_REFUSED`]
    /// remembered; past that a refused frame's later pieces may start a new frame, which the
    /// limits bound all the same).
    refused: HashSet<u64>,
    held: usize,
    max_frame: usize,
    max_held: usize,
}

impl Reassembly {
    /// At most `max_frame` bytes per frame and `max_held` bytes of unfinished frames in all.
    pub fn new(max_frame: usize, max_held: usize) -> Reassembly {
        Reassembly {
            partial: HashMap::new(),
            refused: HashSet::new(),
            held: 0,
            max_frame,
            max_held,
        }
    }

    /// Takes one received frame.
    pub fn offer(&mut self, frame: &Bytes) -> Piece {
        // Decoded from the frame's own buffer, a chunk's data is a slice of it, not a copy.
        let Ok(ChunkEnvelope {
            request_id,
            chunk: Some(chunk),
        }) = ChunkEnvelope::decode(frame.clone())
        else {
            return Piece::Frame;
        };
        if self.refused.contains(&request_id) {
            if chunk.last {
                self.refused.remove(&request_id);
            }
            return Piece::Pending;
        }
        let so_far = self.partial.get(&request_id).map_or(0, Vec::len);
        if so_far + chunk.data.len() > self.max_frame
            || self.held + chunk.data.len() > self.max_held
        {
            self.forget(request_id);
            if !chunk.last && self.refused.len() < MAX_REFUSED {
                self.refused.insert(request_id);
            }
            return Piece::TooLarge(request_id);
        }
        self.held += chunk.data.len();
        let whole = self.partial.entry(request_id).or_default();
        whole.extend_from_slice(&chunk.data);
        if chunk.last {
            let whole = self.partial.remove(&request_id).unwrap_or_default();
            self.held -= whole.len();
            return Piece::Whole(whole);
        }
        Piece::Pending
    }

    /// Drops what was received of `request_id`'s frame.
    pub fn forget(&mut self, request_id: u64) {
        if let Some(whole) = self.partial.remove(&request_id) {
            self.held -= whole.len();
        }
    }

    /// Bytes of unfinished frames held.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(frame: &[u8]) -> Bytes {
        Bytes::copy_from_slice(frame)
    }

    fn envelope(request_id: u64, len: usize) -> Vec<u8> {
        cluster::Envelope {
            request_id,
            deadline_unix_ms: 7,
            body: Some(cluster::envelope::Body::Error(cluster::Error {
                code: 1,
                message: "x".repeat(len),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_small_frame_is_not_split_and_is_not_a_chunk() {
        let frame = envelope(1, 100);
        assert_eq!(split(1, frame.clone()), vec![frame.clone()]);
        assert_eq!(
            Reassembly::new(1 << 20, 1 << 20).offer(&bytes(&frame)),
            Piece::Frame
        );
    }

    #[test]
    fn interleaved_pieces_of_two_frames_come_back_whole_each() {
        let (a, b) = (envelope(1, 3 * CHUNK_BYTES), envelope(2, CHUNK_BYTES + 1));
        let (pa, pb) = (split(1, a.clone()), split(2, b.clone()));
        assert_eq!(pa.len(), 4);
        assert_eq!(pb.len(), 2);
        assert!(pa.iter().chain(&pb).all(|p| p.len() <= CHUNK_BYTES + 64));
        let mut r = Reassembly::new(64 << 20, 64 << 20);
        let mut whole = Vec::new();
        let order = [(&pa, 0), (&pb, 0), (&pa, 1), (&pa, 2), (&pb, 1), (&pa, 3)];
        for (pieces, i) in order {
            match r.offer(&bytes(&pieces[i])) {
                Piece::Whole(frame) => whole.push(frame),
                Piece::Pending => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(whole, vec![b, a]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_once_and_its_other_pieces_dropped() {
        let big = split(1, envelope(1, 4 * CHUNK_BYTES));
        let small = split(2, envelope(2, 2 * CHUNK_BYTES));
        let mut r = Reassembly::new(3 * CHUNK_BYTES, 64 << 20);
        let mut seen = Vec::new();
        for piece in &big {
            seen.push(r.offer(&bytes(piece)));
        }
        assert_eq!(
            seen,
            [
                Piece::Pending,
                Piece::Pending,
                Piece::Pending,
                Piece::TooLarge(1),
                Piece::Pending
            ]
        );
        assert_eq!(r.held(), 0);
        // The other frame is unaffected, and the refused id is forgotten after its last piece.
        let last = small.len() - 1;
        for piece in &small[..last] {
            assert_eq!(r.offer(&bytes(piece)), Piece::Pending);
        }
        assert!(matches!(r.offer(&bytes(&small[last])), Piece::Whole(_)));
        assert!(r.refused.is_empty());
    }

    #[test]
    fn unfinished_frames_are_bounded_in_all() {
        let a = split(1, envelope(1, 2 * CHUNK_BYTES));
        let b_pieces = split(2, envelope(2, 2 * CHUNK_BYTES));
        let mut r = Reassembly::new(64 << 20, CHUNK_BYTES + CHUNK_BYTES / 2);
        assert_eq!(r.offer(&bytes(&a[0])), Piece::Pending);
        assert_eq!(r.offer(&bytes(&b_pieces[0])), Piece::TooLarge(2));
        assert_eq!(r.held(), CHUNK_BYTES);
    }

    #[test]
    fn the_outbox_takes_one_piece_of_each_frame_in_turn() {
        let mut outbox = Outbox::default();
        outbox.push_pieces(split(1, envelope(1, 2 * CHUNK_BYTES + 1)));
        outbox.push_pieces(split(2, envelope(2, CHUNK_BYTES + 1)));
        let mut r = Reassembly::new(64 << 20, 64 << 20);
        let mut order = Vec::new();
        while let Some(piece) = outbox.next_piece() {
            let id = ChunkEnvelope::decode(piece.as_slice()).unwrap().request_id;
            order.push((id, matches!(r.offer(&bytes(&piece)), Piece::Whole(_))));
        }
        assert_eq!(
            order,
            [(1, false), (2, false), (1, false), (2, true), (1, true)]
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn garbage_is_not_a_chunk() {
        let mut r = Reassembly::new(1 << 20, 1 << 20);
        assert_eq!(r.offer(&bytes(&[0xff, 0xff, 0xff])), Piece::Frame);
        assert_eq!(r.offer(&bytes(&[])), Piece::Frame);
    }
}
