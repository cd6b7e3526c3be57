//! INV-10's dudect run: do secret comparisons take time that depends on the secret?
//!
//! ```text
//! cargo bench -p coordinator --bench dudect [-- --filter NAME | --continuous NAME]
//! ```
//!
//! dudect (Reparaz, Balasch, Verbauwhede 2017, via the `dudect-bencher` crate) times one operation
//! on two classes of input, interleaved at random, and runs Welch's t-test on the two timing
//! distributions (cropped at several percentiles). `max t` above 4.5 in absolute value means the
//! classes are told apart by timing: the comparison leaks. Both classes are wrong credentials of
//! the same length, so every call takes the same path and fails:
//!
//! - `token_first_byte_vs_last_byte`: `auth::tokens_match` (the admin token and worker tokens)
//!   against a 43-character token, presented with its last byte changed (left) or its first byte
//!   changed (right). An early-exit comparison would take longer for the left class.
//! - `api_key_first_char_vs_last_char`: `Authenticator::authenticate` for a key whose id is in the
//!   store, with the last (left) or first (right) character of its secret changed: the cache
//!   misses, the store's record is found and its digest compared with the presented key's.
//!
//! Each function runs 100,000 timed samples per batch, 20 batches. The classes share one input
//! buffer refilled from one source before each sample: copying from two different buffers alone
//! moved `max t` past 10 on identical contents on our 2-core VM. Three runs on that VM: `max t`
//! 1.3–1.7 for `tokens_match` and 1.4–1.9 for `authenticate` (an earlier version of this bench that
//! allocated the buffer anew for every batch saw 2.1–6.4 for `authenticate`, with a sign that
//! changed between runs).

use std::collections::HashMap;
use std::num::NonZeroUsize;

use coordinator::auth::{
    Authenticator, KeyRecord, KeyStore, Pepper, Scopes, generate, tokens_match,
};
use dudect_bencher::ctbench::{BenchFn, BenchMetadata, BenchName, BenchOpts, run_benches_console};
use dudect_bencher::rand::RngExt;
use dudect_bencher::{BenchRng, Class, CtRunner};

const SAMPLES: usize = 100_000;
const BATCHES: usize = 20;

/// A byte that differs from `b` and stays printable ASCII, as tokens are.
fn other(b: u8) -> u8 {
    if b == b'A' { b'B' } else { b'A' }
}

/// Times `check` on `valid` with the byte at `left` (class left) or at `right` (class right)
/// changed, in random order. One buffer, refilled from `valid` before each sample with one byte
/// changed: the classes differ only in which byte, never in address (copying from two different
/// buffers alone moved t past 10 here, through the cache).
fn compare_classes(
    runner: &mut CtRunner,
    rng: &mut BenchRng,
    valid: &[u8],
    (left, right): (usize, usize),
    check: impl Fn(&[u8]) -> bool,
) {
    let mut presented = valid.to_vec();
    for _ in 0..BATCHES {
        let classes: Vec<Class> = (0..SAMPLES)
            .map(|_| {
                if rng.random::<bool>() {
                    Class::Left
                } else {
                    Class::Right
                }
            })
            .collect();
        for class in classes {
            presented.copy_from_slice(valid);
            let at = match class {
                Class::Left => left,
                Class::Right => right,
            };
            presented[at] = other(valid[at]);
            runner.run_one(class, || check(&presented));
        }
    }
}

fn token_first_byte_vs_last_byte(runner: &mut CtRunner, rng: &mut BenchRng) {
    let expected: Vec<u8> = (0..43).map(|_| b'a' + rng.random_range(0..26u8)).collect();
    let last = expected.len() - 1;
    compare_classes(runner, rng, &expected.clone(), (last, 0), |presented| {
        tokens_match(presented, &expected)
    });
}

struct OneKey(HashMap<String, KeyRecord>);

impl KeyStore for OneKey {
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        self.0.get(key_id).cloned()
    }
}

fn api_key_first_char_vs_last_char(runner: &mut CtRunner, rng: &mut BenchRng) {
    let pepper_secret: Vec<u8> = (0..32).map(|_| rng.random()).collect();
    let pepper = Pepper::new(&pepper_secret).expect("a 32-byte pepper");
    let key = generate();
    let record = KeyRecord {
        key_id: key.key_id.clone(),
        tenant: "tenant".into(),
        scopes: Scopes {
            read: true,
            write: false,
            manage: false,
        },
        collections: None,
        digest: pepper.digest(&key.full),
        is_revoked: false,
    };
    let store = OneKey(HashMap::from([(key.key_id.clone(), record)]));
    let auth = Authenticator::new(store, pepper, NonZeroUsize::new(1024).expect("non-zero"));
    let full = key.full.as_bytes();
    let (last, first) = (full.len() - 1, full.len() - coordinator::auth::SECRET_LEN);
    compare_classes(runner, rng, full, (last, first), |presented| {
        let presented = std::str::from_utf8(presented).expect("ASCII");
        auth.authenticate(Some(presented)).is_err()
    });
}

/// `ctbench_main!` without its argument parser, which refuses the `--bench` that `cargo bench`
/// passes. Options: `--filter NAME` (run the functions whose name contains NAME) and
/// `--continuous NAME` (run the first match until interrupted, printing t as it goes).
fn main() {
    let mut opts = BenchOpts::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--filter" => opts.filter = args.next(),
            "--continuous" => {
                opts.continuous = true;
                opts.filter = args.next();
            }
            other => {
                eprintln!("unknown option {other}; options: --filter NAME, --continuous NAME");
                std::process::exit(2);
            }
        }
    }
    let bench = |name: &'static str, benchfn: BenchFn| BenchMetadata {
        name: BenchName(name),
        seed: None,
        benchfn,
    };
    let benches = vec![
        bench(
            "token_first_byte_vs_last_byte",
            token_first_byte_vs_last_byte,
        ),
        bench(
            "api_key_first_char_vs_last_char",
            api_key_first_char_vs_last_char,
        ),
    ];
    if let Err(err) = run_benches_console(opts, benches) {
        eprintln!("dudect: {err}");
        std::process::exit(1);
    }
}
