//! Distance kernels and a cache prefetch hint.
//!
//! [`dot`] and [`l2_sq`] pick an implementation once per process: on x86_64 CPUs that report
//! AVX2 and FMA at run time they call kernels compiled with `#[target_feature(enable = "avx2,fma")]`;
//! everywhere else they call a portable kernel written in chunks of eight with eight independent
//! accumulators, which the compiler turns into SSE2 (or NEON) code.
//!
//! # Safety argument
//!
//! - The AVX2+FMA kernels are only called after `is_x86_feature_detected!` reported both features
//!   for this CPU (the answer is cached in [`LEVEL`]), so they never run an instruction the CPU
//!   lacks.
//! - The kernels read `n = min(a.len(), b.len())` elements from each slice and every unaligned load
//!   reads 8 lanes starting at an index `i` with `i + 8 <= n`, so no load leaves either slice.
//!   Callers pass equal lengths (checked by a `debug_assert`); a mismatch only shortens the sum.
//! - [`prefetch`] issues a hint that never faults and never reads into the program's view of
//!   memory, so any address is sound; it is only ever given the address of a live slice.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// Inner product of two equal-length slices.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(
        a.len(),
        b.len(),
        "distance between vectors of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: `has_avx2_fma` returned true, so this CPU supports AVX2 and FMA.
        return unsafe { x86::dot(a, b) };
    }
    portable::dot(a, b)
}

/// Squared Euclidean distance of two equal-length slices.
#[inline]
pub(crate) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(
        a.len(),
        b.len(),
        "distance between vectors of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: `has_avx2_fma` returned true, so this CPU supports AVX2 and FMA.
        return unsafe { x86::l2_sq(a, b) };
    }
    portable::l2_sq(a, b)
}

/// Asks the CPU to start loading the cache lines holding the first `lines` 64-byte lines of
/// `data` into all cache levels. A hint only: it has no effect on results.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = data.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(data);
        let mut offset = 0;
        while offset < bytes && offset < lines * 64 {
            // SAFETY: `offset < bytes`, so the address lies inside `data`; a prefetch never faults
            // and does not dereference the pointer as far as the memory model is concerned.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (data, lines);
    }
}

/// The kernel chosen for this process: 0 = not decided yet, 1 = portable, 2 = AVX2+FMA.
#[cfg(target_arch = "x86_64")]
static LEVEL: AtomicU8 = AtomicU8::new(0);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2_fma() -> bool {
    match LEVEL.load(Ordering::Relaxed) {
        0 => detect(),
        level => level == 2,
    }
}

#[cfg(target_arch = "x86_64")]
#[cold]
fn detect() -> bool {
    let found = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    LEVEL.store(if found { 2 } else { 1 }, Ordering::Relaxed);
    found
}

/// Portable kernels: eight independent accumulators over chunks of eight, so the loop has no
/// serial dependency chain and vectorises to two 4-lane SSE2 operations per chunk.
pub(crate) mod portable {
    const LANES: usize = 8;

    /// Inner product.
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = a_chunks
            .remainder()
            .iter()
            .zip(b_chunks.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a_chunks.zip(b_chunks) {
            for lane in 0..LANES {
                acc[lane] += x[lane] * y[lane];
            }
        }
        reduce(acc) + tail
    }

    /// Squared Euclidean distance.
    pub(crate) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = a_chunks
            .remainder()
            .iter()
            .zip(b_chunks.remainder())
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        for (x, y) in a_chunks.zip(b_chunks) {
            for lane in 0..LANES {
                let diff = x[lane] - y[lane];
                acc[lane] += diff * diff;
            }
        }
        reduce(acc) + tail
    }

    fn reduce(acc: [f32; LANES]) -> f32 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }
}

/// AVX2+FMA kernels: four 8-lane accumulators (32 floats per iteration), then single 8-lane steps,
/// then a scalar tail.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::{
        __m256, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
        _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_setzero_ps, _mm256_sub_ps,
    };

    /// Inner product.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, slot) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 8 * j + 8 <= i + 32 <= n`, so both 8-lane loads stay inside their
                // slices; `loadu` has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * j)),
                        _mm256_loadu_ps(pb.add(i + 8 * j)),
                    )
                };
                *slot = _mm256_fmadd_ps(x, y, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, so both loads stay inside their slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let mut sum = hsum(acc);
        for k in i..n {
            sum += a[k] * b[k];
        }
        sum
    }

    /// Squared Euclidean distance.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, slot) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 8 * j + 8 <= i + 32 <= n`, so both 8-lane loads stay inside their
                // slices; `loadu` has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * j)),
                        _mm256_loadu_ps(pb.add(i + 8 * j)),
                    )
                };
                let diff = _mm256_sub_ps(x, y);
                *slot = _mm256_fmadd_ps(diff, diff, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, so both loads stay inside their slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            let diff = _mm256_sub_ps(x, y);
            acc[0] = _mm256_fmadd_ps(diff, diff, acc[0]);
            i += 8;
        }
        let mut sum = hsum(acc);
        for k in i..n {
            let diff = a[k] - b[k];
            sum += diff * diff;
        }
        sum
    }

    /// Sum of all lanes of the four accumulators.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(acc: [__m256; 4]) -> f32 {
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let x = _mm_add_ss(x, _mm_shuffle_ps::<0x55>(x, x));
        _mm_cvtss_f32(x)
    }
}

#[cfg(test)]
mod tests;
