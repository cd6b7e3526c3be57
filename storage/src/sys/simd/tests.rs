//! The kernels against a plain f64 reference on random data of every small length.

use super::*;

/// A small deterministic generator (SplitMix64), so failures reproduce from the printed seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vector(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.unit()).collect()
    }
}

fn reference_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn reference_l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum()
}

/// Rounding error of an f32 sum of `len` products of magnitude <= 4, with margin.
fn tolerance(len: usize) -> f64 {
    1e-5 * (len as f64 + 1.0) * 4.0
}

fn lengths() -> impl Iterator<Item = usize> {
    (0..=70).chain([384, 4096])
}

#[track_caller]
fn check_kernel(
    name: &str,
    kernel: fn(&[f32], &[f32]) -> f32,
    reference: fn(&[f32], &[f32]) -> f64,
) {
    let seed = 0x5eed_0001;
    let mut rng = Rng(seed);
    for len in lengths() {
        for _ in 0..3 {
            let (a, b) = (rng.vector(len), rng.vector(len));
            let got = kernel(&a, &b) as f64;
            let want = reference(&a, &b);
            assert!(
                (got - want).abs() <= tolerance(len),
                "{name}: len {len}, seed {seed:#x}: got {got}, want {want}"
            );
        }
    }
}

#[test]
fn dispatched_kernels_match_reference() {
    check_kernel("dot", dot, reference_dot);
    check_kernel("l2_sq", l2_sq, reference_l2);
}

#[test]
fn portable_kernels_match_reference() {
    check_kernel("portable::dot", portable::dot, reference_dot);
    check_kernel("portable::l2_sq", portable::l2_sq, reference_l2);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_kernels_match_reference() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        eprintln!("this CPU lacks AVX2 or FMA; only the portable kernels are checked");
        return;
    }
    fn avx_dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the test checked for AVX2 and FMA above before calling this.
        unsafe { x86::dot(a, b) }
    }
    fn avx_l2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the test checked for AVX2 and FMA above before calling this.
        unsafe { x86::l2_sq(a, b) }
    }
    check_kernel("x86::dot", avx_dot, reference_dot);
    check_kernel("x86::l2_sq", avx_l2, reference_l2);
}

#[test]
fn unequal_lengths_use_the_shorter_prefix() {
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [1.0, 1.0];
    assert_eq!(portable::dot(&a, &b), 3.0);
    assert_eq!(portable::l2_sq(&a, &b), 1.0);
}

#[test]
fn prefetch_accepts_any_slice() {
    let data = vec![1.0f32; 100];
    prefetch(&data, 4);
    prefetch(&data[..0], 4);
    prefetch::<u32>(&[], 1);
}
