//! The engine's own thread pool for matrix products: persistent workers that spin briefly
//! between jobs, and a fixed split of every job into parts.
//!
//! A decode step of SmolLM2-135M is about 150 matrix products of 50 µs or less each. Handing
//! each to rayon puts its idle thread to sleep between them and wakes it with a futex for the
//! next (measured: a sixth of a step's time in wake-ups and context switches on 2 cores). Here a
//! worker that finished a part spins for [`SPIN`] before it parks, so during a step it sees the
//! next job within a few hundred nanoseconds, and the caller does part 0 itself. Parts are
//! fixed (part `p` of `P` is always the same rows), and every kernel computes an output row
//! alone, so results do not depend on the number of threads.
//!
//! The workspace forbids `unsafe`, so a job is an `Arc` that owns what it reads (the weights
//! are `Arc`s already) and returns what it wrote through per-part buffers.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it parks: [`SPIN_HARD`] on the CPU,
/// then yielding it to any other thread that wants it.
const SPIN: Duration = Duration::from_micros(200);
const SPIN_HARD: Duration = Duration::from_micros(30);

/// A job split into parts; `run(p, parts)` does part `p`.
pub(crate) trait Task: Send + Sync {
    fn run(&self, part: usize, parts: usize);
}

#[derive(Default)]
struct Shared {
    /// Incremented for every job.
    epoch: AtomicU64,
    job: Mutex<Option<Arc<dyn Task>>>,
    /// Parts of the current job still running on workers.
    pending: AtomicUsize,
    /// A worker's part panicked.
    panicked: AtomicBool,
    /// Incremented by [`prewake`]: parked workers start spinning.
    pokes: AtomicU64,
    /// Workers parked (or about to): only then does a new job take `sleep` and notify `wake`
    /// (a notification is a system call even with nobody waiting).
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct Pool {
    shared: Arc<Shared>,
    parts: usize,
    /// One job at a time; a caller that finds the pool busy does its job alone.
    busy: Mutex<()>,
}

thread_local! {
    /// The thread count [`with_threads`] set for this thread.
    static THREADS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with the engine's matrix products and attention split among `threads` threads (the
/// calling one included) instead of the default (`RAYON_NUM_THREADS`, else one per CPU).
/// Results do not depend on it: every output row is computed by one thread in a fixed order.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let before = THREADS.with(|t| t.replace(Some(threads.max(1))));
    let out = f();
    THREADS.with(|t| t.set(before));
    out
}

/// Tells the engine's threads that work is coming (a request arrived): those parked since the
/// last job start spinning now, and their wake-up overlaps with decoding the request instead of
/// delaying the step's first product.
pub fn prewake() {
    Pool::global().prewake();
}

/// Runs `f` on a new thread named `name` that is the only thread of its own rayon pool: the
/// engine's steps called from it run on it directly (see `model::on_pool`), with no hand-over
/// to another thread per step. For a loop that serves steps, such as a worker's actor.
pub fn spawn_engine_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let handle = Arc::new(Mutex::new(None));
    let slot = handle.clone();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .spawn_handler(move |thread| {
            let h = std::thread::Builder::new().name(name.clone()).spawn(move || thread.run())?;
            *lock(&slot) = Some(h);
            Ok(())
        })
        .build()
        .map_err(std::io::Error::other)?;
    let pool = Arc::new(pool);
    let keep = pool.clone();
    // The pool lives as long as `f` runs; its thread ends after.
    pool.spawn(move || {
        let _keep = keep;
        f();
    });
    let h = lock(&handle).take();
    h.ok_or_else(|| std::io::Error::other("the engine thread did not start"))
}

/// The thread count [`with_threads`] set on this thread, if any.
pub(crate) fn threads_override() -> Option<usize> {
    THREADS.with(|t| t.get())
}

impl Pool {
    /// The pool of the calling thread: the one of [`with_threads`]'s count, else the one every
    /// stage shares, with as many parts as `RAYON_NUM_THREADS` says, else as many as there are
    /// CPUs, the caller being one of them.
    pub(crate) fn global() -> &'static Pool {
        static POOLS: OnceLock<Mutex<HashMap<usize, &'static Pool>>> = OnceLock::new();
        // The default once: finding it may read /proc (the CPUs, cgroup quotas).
        static DEFAULT: OnceLock<usize> = OnceLock::new();
        let parts = threads_override()
            .unwrap_or_else(|| *DEFAULT.get_or_init(candle_core::utils::get_num_threads))
            .max(1);
        let mut pools = lock(POOLS.get_or_init(Default::default));
        // One pool per count ever asked for (normally one), kept for the process's life.
        pools.entry(parts).or_insert_with(|| Box::leak(Box::new(Pool::new(parts))))
    }

    fn new(parts: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let mut started = 1;
        for part in 1..parts {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bitorch-matmul-{part}"))
                .spawn(move || worker(&shared, part, parts));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        // Threads that could not start: their parts would never run, so the caller does all.
        if started < parts {
            return Self { shared: Arc::default(), parts: 1, busy: Mutex::new(()) };
        }
        Self { shared, parts, busy: Mutex::new(()) }
    }

    /// Number of parts every job is split into.
    pub(crate) fn parts(&self) -> usize {
        self.parts
    }

    /// Gets parked workers spinning, so that they see the next job at once.
    fn prewake(&self) {
        if self.parts > 1 {
            let s = &*self.shared;
            s.pokes.fetch_add(1, Ordering::SeqCst);
            s.wake_sleepers();
        }
    }

    /// Runs every part of `task` and returns when all are done.
    pub(crate) fn run(&self, task: Arc<dyn Task>) {
        let parts = self.parts;
        let guard = match self.busy.try_lock() {
            Ok(g) => g,
            Err(_) => {
                // Another session's step holds the workers: this one runs alone, on its core.
                for p in 0..parts {
                    task.run(p, parts);
                }
                return;
            }
        };
        if parts == 1 {
            task.run(0, 1);
            return;
        }
        let s = &*self.shared;
        *lock(&s.job) = Some(task.clone());
        s.pending.store(parts - 1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        s.wake_sleepers();
        let mine = catch_unwind(AssertUnwindSafe(|| task.run(0, parts)));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *lock(&s.job) = None;
        drop(guard);
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a matmul worker's part panicked");
        }
    }
}

impl Shared {
    /// Wakes the parked workers, if any. Called after changing `epoch` or `pokes` (SeqCst):
    /// a worker about to park counts itself in `sleepers` (SeqCst) before it checks them, so
    /// either it sees the change or this sees it, takes the lock (which it holds until it
    /// waits) and wakes it.
    fn wake_sleepers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&self.sleep);
            self.wake.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(s: &Shared, part: usize, parts: usize) {
    let mut seen = 0u64;
    loop {
        let mut idle = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let waited = idle.elapsed();
            if waited < SPIN_HARD {
                continue;
            }
            if waited < SPIN {
                // Politely: a thread that has real work on this core (another process's step,
                // the network) goes first.
                std::thread::yield_now();
                continue;
            }
            let mut g = lock(&s.sleep);
            let poked = s.pokes.load(Ordering::SeqCst);
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.epoch.load(Ordering::SeqCst) == seen && s.pokes.load(Ordering::SeqCst) == poked
            {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            idle = Instant::now();
        };
        seen = epoch;
        let job = lock(&s.job).clone();
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| job.run(part, parts))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Squares {
        out: Vec<Mutex<Vec<u64>>>,
    }

    impl Task for Squares {
        fn run(&self, part: usize, parts: usize) {
            let (lo, hi) = (part * 1000 / parts, (part + 1) * 1000 / parts);
            *lock(&self.out[part]) = (lo as u64..hi as u64).map(|i| i * i).collect();
        }
    }

    #[test]
    fn every_part_runs_once_per_job_whatever_the_thread_count() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for _ in 0..200 {
                let task = Arc::new(Squares {
                    out: (0..pool.parts()).map(|_| Mutex::new(Vec::new())).collect(),
                });
                pool.run(task.clone());
                let all: Vec<u64> = task.out.iter().flat_map(|o| lock(o).clone()).collect();
                assert_eq!(all, (0..1000u64).map(|i| i * i).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_goes_on() {
        struct Boom;
        impl Task for Boom {
            fn run(&self, part: usize, _: usize) {
                assert_ne!(part, 1, "part 1 fails");
            }
        }
        let pool = Pool::new(2);
        assert!(catch_unwind(AssertUnwindSafe(|| pool.run(Arc::new(Boom)))).is_err());
        let task = Arc::new(Squares { out: (0..2).map(|_| Mutex::new(Vec::new())).collect() });
        pool.run(task.clone());
        assert_eq!(lock(&task.out[1]).len(), 500);
    }
}
