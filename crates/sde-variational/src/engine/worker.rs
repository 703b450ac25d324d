//! One helper thread shared by all callers, for the second block of a split batch.
//!
//! A job is *claimable*: the helper runs it if it gets to it first, and otherwise the caller,
//! done with its own block, takes it back and runs it itself. So a busy, descheduled or
//! sleeping helper costs at most the single-threaded time, never a wait. Between jobs the
//! helper spins for up to [`SPIN`] (`spin_loop` hints, then `yield_now` so that
//! it gives way on a loaded machine) before it blocks: during training, with calls every
//! hundred microseconds or so, it picks a job up within a microsecond instead of waking from
//! sleep (tens of microseconds in a virtual machine, which made rayon's pool a poor fit).
//! Jobs own their data, so no lifetimes cross threads.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long the helper spins for the next job, and a caller for a job the helper has
/// started, before blocking.
pub(crate) const SPIN: Duration = Duration::from_millis(1);

/// Pure `spin_loop` spinning for this long, then `yield_now` between checks.
const HOT: Duration = Duration::from_micros(50);

/// A job as the helper sees it: run it unless its caller already has.
trait Claim: Send + Sync {
    fn run(&self);
}

type Job<R> = Box<dyn FnOnce() -> R + Send>;

/// The job of one split, its result, and whether the result is in.
struct Slot<R> {
    job: Mutex<Option<Job<R>>>,
    result: Mutex<Option<R>>,
    done: AtomicBool,
    ready: Condvar,
}

impl<R: Send> Claim for Slot<R> {
    fn run(&self) {
        let job = self
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(job) = job {
            // A panic is caught (the helper stays alive) and leaves no result: the caller
            // gets an error.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).ok();
            *self.result.lock().unwrap_or_else(PoisonError::into_inner) = r;
            self.done.store(true, Ordering::Release);
            self.ready.notify_all();
        }
    }
}

/// Where jobs go to the helper (`None` if it could not be started).
type Queue = Sender<Arc<dyn Claim>>;

static JOBS: OnceLock<Option<Queue>> = OnceLock::new();

fn start() -> Option<Queue> {
    let (tx, rx) = mpsc::channel::<Arc<dyn Claim>>();
    std::thread::Builder::new()
        .name("fused-mlp".into())
        .spawn(move || {
            while let Some(job) = receive(&rx) {
                job.run();
            }
        })
        .ok()
        .map(|_| tx)
}

/// Calls `ready` until it gives `Some`: spinning for [`HOT`], yielding until [`SPIN`],
/// then `None` (the caller blocks).
fn spin<M>(mut ready: impl FnMut() -> Option<M>) -> Option<M> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        if let Some(m) = ready() {
            return Some(m);
        }
        n = n.wrapping_add(1);
        if n % 32 == 0 {
            let waited = start.elapsed();
            if waited > SPIN {
                return None;
            }
            if waited > HOT {
                std::thread::yield_now();
                continue;
            }
        }
        std::hint::spin_loop();
    }
}

/// The next job, or `None` once no sender is left.
fn receive(rx: &Receiver<Arc<dyn Claim>>) -> Option<Arc<dyn Claim>> {
    let polled = spin(|| match rx.try_recv() {
        Ok(job) => Some(Some(job)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => Some(None),
    });
    match polled {
        Some(job) => job,
        None => rx.recv().ok(),
    }
}

/// A submitted job; [`wait`](Pending::wait) collects its result.
pub(crate) struct Pending<R>(Arc<Slot<R>>);

impl<R: Send + 'static> Pending<R> {
    /// The job's result: run here if the helper has not started it, else waited for. An
    /// error if the job panicked on the helper.
    pub(crate) fn wait(self) -> candle_core::Result<R> {
        let slot = &self.0;
        let job = slot
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(job) = job {
            return Ok(job());
        }
        let done = || slot.done.load(Ordering::Acquire).then_some(());
        if spin(done).is_none() {
            let mut result = slot.result.lock().unwrap_or_else(PoisonError::into_inner);
            while !slot.done.load(Ordering::Acquire) {
                result = slot
                    .ready
                    .wait(result)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        match slot
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(r) => Ok(r),
            None => candle_core::bail!("fused_mlp: the helper thread's job panicked"),
        }
    }
}

/// Offers `f` to the helper thread; [`Pending::wait`] runs it on the calling thread if the
/// helper has not started it (or there is no helper).
pub(crate) fn submit<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Pending<R> {
    let slot = Arc::new(Slot {
        job: Mutex::new(Some(Box::new(f) as Job<R>)),
        result: Mutex::new(None),
        done: AtomicBool::new(false),
        ready: Condvar::new(),
    });
    if let Some(jobs) = JOBS.get_or_init(start) {
        let claim: Arc<dyn Claim> = slot.clone();
        // If the helper is gone, the job stays in its slot for the caller.
        let _ = jobs.send(claim);
    }
    Pending(slot)
}
