//! The byte layout of an encoded [`Graph`], written by [`Graph::encode`] and checked field by
//! field by [`Graph::decode`].
//!
//! All integers are little-endian. The vectors are not part of it: the segment stores them
//! separately and passes their count to `decode`.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `VVHNSW\0\n` |
//! | 8 | 2 | format version, currently 2 (version 1, which has no copy chains, is still read) |
//! | 10 | 1 | metric code ([`Metric::code`]) |
//! | 11 | 1 | zero |
//! | 12 | 2 | `m` |
//! | 14 | 2 | `ef_construction` used to build (informational) |
//! | 16 | 8 | level seed (levels of nodes inserted after decoding are drawn from it) |
//! | 24 | 4 | `n_nodes`: node ids are `0..n_nodes` |
//! | 28 | 4 | number of inserted nodes |
//! | 32 | 4 | entry point node, `0xFFFF_FFFF` when no node is inserted |
//! | 36 | 4 | entry point level, 0 when no node is inserted |
//! | 40 | `n_nodes` | level of each node, `0xFF` for a node that is not inserted; at most 24 |
//! | 40 + `n_nodes` | ... | for each inserted node in id order, for each level from 0 to its level: a `u16` count `c` (at most `2m` on level 0 and `m` above) followed by `c` `u32` neighbour ids |
//! | ... | 4 | version 2 only: `n_copies`, the number of copy-chain links, below `n_nodes` |
//! | ... | `8 n_copies` | version 2 only: each link as two `u32`s, `node` then `next`: `next` follows `node` in its copy chain |
//!
//! Every neighbour id on level `l` names an inserted node whose level is at least `l`, and no
//! node links to itself. In the copy chains, both ends of a link are inserted nodes, no node
//! links to itself, and no node has two links out or two links in. Nothing follows the last
//! list (version 1) or the last copy link (version 2).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{Graph, HnswParams, MAX_LEVEL, NO_NODE, neighbours, pack, random_level, write_list};
use crate::index::Metric;
use crate::{Error, Result};

const MAGIC: [u8; 8] = *b"VVHNSW\0\n";
const FORMAT_VERSION: u16 = 2;
/// The first version, without copy chains: still decoded (as a graph whose chains are empty).
const FORMAT_VERSION_1: u16 = 1;
const HEADER_BYTES: usize = 40;
const NOT_INSERTED: u8 = 0xFF;

impl Graph {
    /// Encodes the graph in the layout documented in `format.rs`.
    ///
    /// Meant for a graph that no insert is running on (a sealed segment's). Encoding during
    /// inserts is still safe and decodable, but may leave out the nodes in flight.
    pub fn encode(&self) -> Vec<u8> {
        let entry = self.entry.load(Ordering::Acquire);
        // A segment frozen before it filled up has spare capacity; only the used prefix is stored.
        let n_nodes = (0..self.capacity)
            .rev()
            .find(|&node| self.inserted[node].load(Ordering::Acquire))
            .map_or(0, |node| node + 1);
        let levels: Vec<u8> = (0..n_nodes as u32)
            .map(|node| {
                if self.inserted[node as usize].load(Ordering::Acquire) {
                    self.level(node) as u8
                } else {
                    NOT_INSERTED
                }
            })
            .collect();
        let n_inserted = levels
            .iter()
            .filter(|&&level| level != NOT_INSERTED)
            .count();
        let (entry_node, entry_level) = match entry {
            super::EMPTY => (NO_NODE, 0),
            packed => {
                let (level, node) = super::unpack(packed);
                (node, level as u32)
            }
        };
        let mut out = Vec::with_capacity(
            HEADER_BYTES + levels.len() + n_inserted * (2 + 4 * 2 * self.params.m),
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(self.metric.code());
        out.push(0);
        out.extend_from_slice(&(self.params.m as u16).to_le_bytes());
        out.extend_from_slice(
            &(self.params.ef_construction.min(u16::MAX as usize) as u16).to_le_bytes(),
        );
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&(n_nodes as u32).to_le_bytes());
        out.extend_from_slice(&(n_inserted as u32).to_le_bytes());
        out.extend_from_slice(&entry_node.to_le_bytes());
        out.extend_from_slice(&entry_level.to_le_bytes());
        out.extend_from_slice(&levels);
        let mut ids = Vec::with_capacity(2 * self.params.m);
        for (node, &level) in levels.iter().enumerate() {
            if level == NOT_INSERTED {
                continue;
            }
            for layer in 0..=level as usize {
                ids.clear();
                // Keep only links the decoder will accept: an insert in flight may have linked a
                // node this snapshot of the levels does not count as inserted.
                ids.extend(
                    neighbours(self.links(node as u32, layer))
                        .iter()
                        .map(|slot| slot.load(Ordering::Relaxed))
                        .filter(|&id| {
                            levels.get(id as usize).is_some_and(|&l| {
                                l != NOT_INSERTED && l as usize >= layer && id as usize != node
                            })
                        }),
                );
                out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
                for id in &ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        let is_inserted = |id: u32| levels.get(id as usize).is_some_and(|&l| l != NOT_INSERTED);
        let copies: Vec<(u32, u32)> = (0..n_nodes as u32)
            .filter(|&node| is_inserted(node))
            .filter_map(|node| Some(node).zip(self.next_copy(node)))
            .filter(|&(_, next)| is_inserted(next))
            .collect();
        out.extend_from_slice(&(copies.len() as u32).to_le_bytes());
        for (node, next) in copies {
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
        }
        out
    }

    /// Decodes a graph written by [`Graph::encode`] for `n_nodes` vectors, checking every field
    /// against the layout's rules and against the caller's `params`, `metric` and `n_nodes`.
    ///
    /// Never panics, and allocates only in proportion to `n_nodes`, which the input must be at
    /// least as long as.
    pub fn decode(
        bytes: &[u8],
        params: HnswParams,
        metric: Metric,
        n_nodes: usize,
    ) -> Result<Graph> {
        if !(2..=64).contains(&params.m) || !(4..=1024).contains(&params.ef_construction) {
            return Err(Error::invalid(format!(
                "hnsw parameters out of range: m = {} (2..=64), ef_construction = {} (4..=1024)",
                params.m, params.ef_construction
            )));
        }
        if n_nodes >= NO_NODE as usize {
            return Err(Error::invalid(format!(
                "a graph holds fewer than {NO_NODE} nodes, got {n_nodes}"
            )));
        }
        let mut reader = Reader { bytes, pos: 0 };
        let header = reader.take(HEADER_BYTES, "header")?;
        if header[0..8] != MAGIC {
            return Err(corrupt(0, "not an hnsw graph (bad magic)"));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(Error::UnsupportedVersion {
                path: PathBuf::new(),
                version,
            });
        }
        if header[10] != metric.code() || header[11] != 0 {
            return Err(corrupt(
                10,
                format!(
                    "graph metric code {} does not match the collection's {metric:?}",
                    header[10]
                ),
            ));
        }
        let m = u16::from_le_bytes([header[12], header[13]]) as usize;
        if m != params.m {
            return Err(corrupt(
                12,
                format!("graph has m = {m}, the collection {}", params.m),
            ));
        }
        let seed = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        let field = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if field(24) as usize != n_nodes {
            return Err(corrupt(
                24,
                format!("graph has {} nodes, the segment {n_nodes}", field(24)),
            ));
        }
        let n_inserted = field(28) as usize;
        let (entry_node, entry_level) = (field(32), field(36) as usize);

        let levels_at = reader.pos;
        let levels = reader.take(n_nodes, "node levels")?;
        let mut counted = 0;
        let mut n_lists = 0;
        for (node, &level) in levels.iter().enumerate() {
            if level == NOT_INSERTED {
                continue;
            }
            if level as usize > MAX_LEVEL {
                return Err(corrupt(
                    (levels_at + node) as u64,
                    format!("node {node} has level {level}, over {MAX_LEVEL}"),
                ));
            }
            counted += 1;
            n_lists += level as usize + 1;
        }
        if counted != n_inserted {
            return Err(corrupt(
                28,
                format!("header counts {n_inserted} inserted nodes, the levels {counted}"),
            ));
        }
        let inserted_level = |node: u32| {
            levels
                .get(node as usize)
                .filter(|&&level| level != NOT_INSERTED)
                .map(|&level| level as usize)
        };
        if n_inserted == 0 {
            if entry_node != NO_NODE || entry_level != 0 {
                return Err(corrupt(32, "entry point set in a graph with no nodes"));
            }
        } else if inserted_level(entry_node) != Some(entry_level) {
            return Err(corrupt(
                32,
                format!(
                    "entry point {entry_node} at level {entry_level} is not an inserted node of that level"
                ),
            ));
        }
        // Each list takes at least its two count bytes: reject a short input before allocating.
        if reader.remaining() < 2 * n_lists {
            return Err(corrupt(bytes.len() as u64, "truncated neighbour lists"));
        }

        let mult = 1.0 / (m as f64).ln();
        let graph = Graph::with_levels(params, metric, seed, n_nodes, |node| {
            inserted_level(node).unwrap_or_else(|| random_level(seed, node, mult))
        });
        let mut ids = Vec::with_capacity(2 * m);
        for node in 0..n_nodes as u32 {
            let Some(level) = inserted_level(node) else {
                continue;
            };
            for layer in 0..=level {
                let count_at = reader.pos;
                let count = reader.u16("neighbour count")? as usize;
                let max = if layer == 0 { 2 * m } else { m };
                if count > max {
                    return Err(corrupt(
                        count_at as u64,
                        format!("node {node} has {count} links on level {layer}, over {max}"),
                    ));
                }
                ids.clear();
                for _ in 0..count {
                    let id_at = reader.pos;
                    let id = reader.u32("neighbour id")?;
                    if id == node || inserted_level(id).is_none_or(|l| l < layer) {
                        return Err(corrupt(
                            id_at as u64,
                            format!(
                                "node {node} links to {id} on level {layer}, which is not an inserted node of that level"
                            ),
                        ));
                    }
                    ids.push(id);
                }
                write_list(graph.links(node, layer), ids.iter().copied());
            }
            graph.inserted[node as usize].store(true, Ordering::Relaxed);
        }
        if version >= FORMAT_VERSION {
            decode_copies(&mut reader, &graph, n_nodes, |node| {
                inserted_level(node).is_some()
            })?;
        }
        if reader.remaining() != 0 {
            return Err(corrupt(
                reader.pos as u64,
                "trailing bytes after the last list",
            ));
        }
        graph.len.store(n_inserted, Ordering::Release);
        if n_inserted > 0 {
            graph
                .entry
                .store(pack(entry_level, entry_node), Ordering::Release);
        }
        Ok(graph)
    }
}

/// Reads the copy-chain links of a version 2 graph into `graph`, checking the rules of the layout.
fn decode_copies(
    reader: &mut Reader,
    graph: &Graph,
    n_nodes: usize,
    is_inserted: impl Fn(u32) -> bool,
) -> Result<()> {
    let count_at = reader.pos;
    let n_copies = reader.u32("copy link count")? as usize;
    if n_copies >= n_nodes.max(1) || reader.remaining() < 8 * n_copies {
        return Err(corrupt(
            count_at as u64,
            format!("{n_copies} copy links for {n_nodes} nodes, or truncated copy links"),
        ));
    }
    let mut has_link_in = vec![false; n_nodes];
    for _ in 0..n_copies {
        let link_at = reader.pos;
        let (node, next) = (reader.u32("copy link")?, reader.u32("copy link")?);
        let valid = node != next
            && is_inserted(node)
            && is_inserted(next)
            && graph.next_copy(node).is_none()
            && !std::mem::replace(&mut has_link_in[next as usize], true);
        if !valid {
            return Err(corrupt(
                link_at as u64,
                format!(
                    "copy link {node} -> {next} is not a link between two inserted nodes, or repeats one"
                ),
            ));
        }
        graph.copies[node as usize].store(next + 1, Ordering::Relaxed);
    }
    Ok(())
}

fn corrupt(offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: PathBuf::new(),
        offset,
        reason: reason.into(),
    }
}

/// A cursor that turns running past the end into a `Corrupt` error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| corrupt(self.bytes.len() as u64, format!("truncated {what}")))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}
