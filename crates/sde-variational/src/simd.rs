//! Runs hot loops compiled for the widest vector unit the CPU has.
//!
//! Rust compiles for the baseline of the target (SSE2 on x86-64), so the element-wise loops
//! of the engine run four `f32` lanes wide. [`wide`] runs a [`Kernel`] through a copy of it
//! compiled with AVX2 where the running CPU has it (detected once). A kernel's
//! [`run`](Kernel::run) must be `#[inline(always)]`, and so must everything it calls, so that
//! all of it is compiled into that copy (a closure would not do: its body stays a separate
//! function compiled for the baseline, as `perf annotate` showed).
//!
//! Rust never contracts `a * b + c` into a fused multiply-add on its own, so both copies
//! compute bit-identical results; AVX2 only widens the vectors.

/// A computation to run through [`wide`].
pub(crate) trait Kernel {
    /// What it returns.
    type Output;
    /// Runs it; implementations must be `#[inline(always)]`.
    fn run(self) -> Self::Output;
}

/// Runs `k`, compiled for AVX2 where the CPU supports it.
#[inline(always)]
pub(crate) fn wide<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            return run_avx2(k);
        }
    }
    k.run()
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// `k.run()` inside a function compiled with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn run_avx2<K: Kernel>(k: K) -> K::Output {
    #[target_feature(enable = "avx2")]
    fn inner<K: Kernel>(k: K) -> K::Output {
        k.run()
    }
    // SAFETY: `inner` only needs AVX2, which `avx2()` detected on this CPU before this call.
    unsafe { inner(k) }
}
