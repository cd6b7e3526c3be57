//! Exact and near duplicates against the exact oracle (INV-27): every point stays reachable and is
//! found by its own vector, and recall does not drop below hnswlib's on the same data.
//!
//! Before the fix, copies of one vector filled every list of every copy (they are all at distance
//! 0 from each other, so the heuristic never prunes them) and pushed out the links to every other
//! point, cutting off the points whose only way in went through the copies.

use super::*;

/// `n` gaussian vectors of `dim` components, normalised for cosine.
fn gaussian_rows(rng: &mut Rng, n: usize, dim: usize, metric: Metric) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| rng.gaussian()).collect();
            normalise(metric, v)
        })
        .collect()
}

fn normalise(metric: Metric, mut v: Vec<f32>) -> Vec<f32> {
    if metric == Metric::Cosine {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Fisher-Yates with the test rng.
fn shuffle<T>(rng: &mut Rng, rows: &mut [T]) {
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i + 1));
    }
}

/// Points of `rows` whose own vector does not come back first from an unfiltered search at `ef`
/// (an exact copy coming back first counts as found: it is at the same distance).
fn not_found_by_own_vector(graph: &Graph, vectors: &Vectors, ef: usize) -> Vec<u32> {
    (0..vectors.len() as u32)
        .filter(|&node| {
            let own = vectors.get(node);
            let hits = graph.search(vectors, own, 1, ef, None);
            let best = graph.metric().distance(own, own);
            !hits
                .first()
                .is_some_and(|hit| hit.node == node || hit.distance <= best)
        })
        .collect()
}

/// Builds a graph over `rows` on one thread (deterministic) and checks that no point is cut off:
/// every node is reachable on level 0 and found by its own vector at `ef`.
#[track_caller]
fn check_no_point_cut_off(label: &str, metric: Metric, rows: &[Vec<f32>], ef: usize) -> Graph {
    let dim = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let vectors = Vectors::new(&flat, dim);
    let graph = Graph::build(PARAMS, metric, &vectors, 1, 7);
    let unreachable = graph.unreachable(vectors.len());
    let missed = not_found_by_own_vector(&graph, &vectors, ef);
    eprintln!(
        "{label} ({metric:?}, {} points): {} unreachable, {} not found by their own vector",
        rows.len(),
        unreachable.len(),
        missed.len()
    );
    assert!(
        unreachable.is_empty() && missed.is_empty(),
        "{label} ({metric:?}): {} unreachable (first {:?}), {} not found by their own vector (first {:?})",
        unreachable.len(),
        &unreachable[..unreachable.len().min(10)],
        missed.len(),
        &missed[..missed.len().min(10)]
    );
    graph
}

/// The case: 5 distinct points and many copies of one other vector (dim 4), in three
/// insertion orders. hnswlib 0.8 with the same parameters finds all 5 in the first two orders and
/// 4 of 5 in the interleaved one; before the fix this graph found none in any order, at 50
/// copies as at 300.
#[test]
fn five_points_beside_copies_of_one_vector_are_found() {
    for metric in [Metric::L2, Metric::Cosine] {
        for copies in [50, 300] {
            let mut rng = Rng(seed());
            let distinct = gaussian_rows(&mut rng, 5, 4, metric);
            let copy = gaussian_rows(&mut rng, 1, 4, metric).remove(0);
            let copies = vec![copy; copies];
            let mut interleaved = copies.clone();
            for (i, point) in distinct.iter().enumerate() {
                interleaved.insert(i * copies.len() / 5 + 1, point.clone());
            }
            for (order, rows) in [
                (
                    "distinct first",
                    [distinct.clone(), copies.clone()].concat(),
                ),
                ("copies first", [copies.clone(), distinct.clone()].concat()),
                ("interleaved", interleaved),
            ] {
                let label = format!("5 points and {} copies, {order}", copies.len());
                check_no_point_cut_off(&label, metric, &rows, DEFAULT_EF);
            }
        }
    }
}

/// Exact copies and near copies (a copy plus gaussian noise of the given standard deviation per
/// component) of a few vectors, at several proportions of the data, shuffled among random points.
///
/// Every point must be reachable and found by its own vector at ef 4096 (the bar; at the
/// default ef a rare outlier of the random points, far from all others, can be missed with or
/// without copies, as in hnswlib), and recall@10 at the default ef must stay at the 0.95 that the
/// copy-free recall tests assert.
#[test]
fn copies_and_near_copies_at_several_proportions() {
    let cases: [(&str, usize, usize, f32); 6] = [
        ("1 vector x 300 exact", 1, 300, 0.0),
        ("1 vector x 3000 exact", 1, 3000, 0.0),
        ("60 vectors x 25 exact", 60, 25, 0.0),
        ("1 vector x 1000 within 1e-6", 1, 1000, 1e-6),
        ("1 vector x 1000 within 1e-3", 1, 1000, 1e-3),
        ("100 vectors x 10 within 1e-4", 100, 10, 1e-4),
    ];
    for metric in [Metric::L2, Metric::Cosine] {
        for (label, n_vectors, n_copies, noise) in cases {
            let mut rng = Rng(seed() ^ 3);
            let mut rows = gaussian_rows(&mut rng, 3000, 16, metric);
            for original in gaussian_rows(&mut rng, n_vectors, 16, metric) {
                for _ in 0..n_copies {
                    let copy = original
                        .iter()
                        .map(|x| x + noise * rng.gaussian())
                        .collect();
                    rows.push(normalise(metric, copy));
                }
            }
            shuffle(&mut rng, &mut rows);
            let graph = check_no_point_cut_off(label, metric, &rows, 4096);
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let data = Dataset {
                queries: gaussian_rows(&mut rng, N_QUERY, 16, metric).concat(),
                base: flat,
                dim: 16,
            };
            let vectors = data.vectors();
            let recall = recall(
                &data,
                metric,
                |query| nodes(&graph.search(&vectors, query, K, DEFAULT_EF, None)),
                None,
            );
            eprintln!("{label} ({metric:?}): recall@{K} at ef {DEFAULT_EF} = {recall:.4}");
            assert!(
                recall >= 0.95,
                "{label} ({metric:?}): recall@{K} = {recall:.4} < 0.95"
            );
        }
    }
}

/// The recall case: 5,000 random 16-d points plus 2,000 copies of one vector, shuffled,
/// recall@10 at ef 128 over 200 random queries.
///
/// hnswlib 0.8 (M 16, ef_construction 200, the same recall definition), run on exactly these
/// vectors and queries with three level seeds, scored 0.67, 0.78 and 0.86 (mean 0.77) and missed
/// 810 to 930 points by their own vector. The graph must do at least as well as its best run
/// (0.86); it is asserted at 0.95, the bar of the copy-free recall tests, and measured 0.9995.
#[test]
fn recall_beside_2000_copies_at_least_hnswlib() {
    let mut rng = Rng(seed() ^ 4);
    let mut rows = gaussian_rows(&mut rng, 5000, 16, Metric::L2);
    let copy = gaussian_rows(&mut rng, 1, 16, Metric::L2).remove(0);
    rows.extend(std::iter::repeat_n(copy, 2000));
    shuffle(&mut rng, &mut rows);
    let data = Dataset {
        queries: gaussian_rows(&mut rng, N_QUERY, 16, Metric::L2).concat(),
        base: rows.concat(),
        dim: 16,
    };
    let graph = check_no_point_cut_off("5000 points and 2000 copies", Metric::L2, &rows, 128);
    let vectors = data.vectors();
    let recall = recall(
        &data,
        Metric::L2,
        |query| nodes(&graph.search(&vectors, query, K, 128, None)),
        None,
    );
    eprintln!("recall@{K} at ef 128 = {recall:.4}");
    assert!(recall >= 0.95, "recall@{K} = {recall:.4} < 0.95");
}

/// Copies are chained, not linked: the chains survive encode and decode, and a search that walks
/// past the original returns the copies a filter accepts even when the original is rejected.
#[test]
fn copy_chains_round_trip_and_serve_filtered_searches() {
    let mut rng = Rng(seed() ^ 5);
    let mut rows = gaussian_rows(&mut rng, 500, 8, Metric::L2);
    let copy = gaussian_rows(&mut rng, 1, 8, Metric::L2).remove(0);
    rows.extend(std::iter::repeat_n(copy.clone(), 100));
    let flat = rows.concat();
    let vectors = Vectors::new(&flat, 8);
    let graph = Graph::build(PARAMS, Metric::L2, &vectors, 1, 7);
    let bytes = graph.encode();
    let decoded = Graph::decode(&bytes, PARAMS, Metric::L2, vectors.len()).unwrap();
    assert_eq!(decoded.encode(), bytes);
    for graph in [&graph, &decoded] {
        assert!(graph.unreachable(vectors.len()).is_empty());
        let all = graph.search(&vectors, &copy, 100, DEFAULT_EF, None);
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(|hit| hit.distance == 0.0 && hit.node >= 500));
        for wanted in [500, 555, 599] {
            let only = |node: u32| node == wanted;
            let hits = graph.search(&vectors, &copy, 1, DEFAULT_EF, Some(&only));
            assert_eq!(nodes(&hits), [wanted]);
        }
    }
}

/// A version 1 graph (no copy chains) still decodes, to the same links.
#[test]
fn version_1_graphs_still_decode() {
    let (data, graph) = small_graph();
    let mut bytes = graph.encode();
    // Version 2 appends a zero copy-link count to a graph without copies; version 1 ends before.
    assert_eq!(bytes[bytes.len() - 4..], [0, 0, 0, 0]);
    bytes.truncate(bytes.len() - 4);
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    let n = data.base.len() / data.dim;
    let decoded = Graph::decode(&bytes, SMALL, Metric::L2, n).unwrap();
    assert_eq!(decoded.encode(), graph.encode());
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    assert!(matches!(
        Graph::decode(&bytes, SMALL, Metric::L2, n),
        Err(crate::Error::UnsupportedVersion { version: 3, .. })
    ));
}
