//! Runtime benchmarks, each printed beside its baseline from the same run.
//!
//! `cargo bench -p drover-core --bench runtime` runs them at full size;
//! `cargo test` runs this binary with tiny sizes as a smoke test. Name sections
//! to run only those: `cargo bench -p drover-core --bench runtime -- cold a b`.
//!
//! (cold) what a user's program meets, reported first: each figure is taken in
//!     a fresh child process (this binary re-executed with
//!     `DROVER_BENCH_CHILD` set), on a fresh current-thread runtime and
//!     `LocalSet`, on glibc's default heap: spawn + launch + complete of
//!     seed-style processes against bare `spawn_local` tasks, allocations per
//!     process, and RSS per process parked waiting for its nudge (from
//!     `VmRSS`) against parked bare tasks. Warm figures follow in (a) and (b):
//!     `cargo bench -p drover-core --bench runtime -- cold a b`;
//! (a) spawn + launch + complete of seed-style add processes against bare
//!     `spawn_local` tasks and the seed's design as written;
//! (b) memory per live process waiting for its nudge against bare tasks;
//! (c) `Step` round trip against a bare two-task ping-pong;
//! (d) kill latency inside `advance` against `JoinHandle::abort`;
//! (e) the pool on every core against one thread.
//!
//! Memory is counted by a counting global allocator: live heap bytes, exact.
//!
//! Timings in (a)–(e) are taken on a warm heap: glibc's trimming is turned off and every
//! timed section runs one untimed round first, so that freed memory is reused
//! instead of being handed back to the kernel and faulted in again. On a cold
//! heap page faults dominate every variant alike (bare tasks included) and hide
//! what the runtime itself costs; a long-running engine runs on a warm heap.
//! The cold section measures that cold start on purpose.

#![allow(missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_core::{DriveMode, Pool, Process, ProcessHandler, State, spawn, spawn_owned};
use tokio::sync::Mutex;
use tokio::task::LocalSet;

// --- a counting allocator --------------------------------------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn allocs() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

// --- the seed's add process --------------------------------------------------

#[derive(Default, PartialEq, Clone, Debug)]
enum DummyState {
    #[default]
    Begin,
    End,
}

impl State for DummyState {
    fn is_done(&self) -> bool {
        self == &DummyState::End
    }
    fn is_paused(&self) -> bool {
        false
    }
}

struct AddProc {
    state: DummyState,
    inp1: i32,
    inp2: i32,
    output: Option<i32>,
}

impl AddProc {
    fn new(inp1: i32, inp2: i32) -> AddProc {
        AddProc { state: DummyState::Begin, inp1, inp2, output: None }
    }
}

impl Process<DummyState> for AddProc {
    fn state(&self) -> &DummyState {
        &self.state
    }
    fn transition_to(&mut self, state: DummyState) {
        self.state = state;
    }
    async fn kill(&mut self) {
        self.state = DummyState::End;
    }
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        self.output = Some(black_box(self.inp1 + self.inp2));
        self.state = DummyState::End;
    }
}

/// An add that also burns about `work` of CPU, for the pool.
struct Heavy {
    add: AddProc,
    rounds: u64,
}

impl Process<DummyState> for Heavy {
    fn state(&self) -> &DummyState {
        &self.add.state
    }
    fn transition_to(&mut self, state: DummyState) {
        self.add.state = state;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        let mut x = self.add.inp1 as u64;
        for i in 0..self.rounds {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        self.add.output = Some(x as i32);
        self.add.state = DummyState::End;
    }
}

// --- the seed's design as written, for reference -----------------------------

mod seed_design {
    //! The seed's `spawn`, with its `...` filled in the plainest way.
    #![allow(dead_code, unreachable_pub)]

    use std::rc::Rc;
    use std::sync::Arc;

    use drover_core::{Process, State};
    use tokio::sync::{Mutex, Notify, mpsc, watch};
    use tokio::task::{JoinHandle, LocalSet};

    pub enum HandlerEvent {
        Kill,
        Pause,
    }

    pub struct ProcessHandler<S> {
        join_handle: JoinHandle<()>,
        _event_sender: mpsc::Sender<HandlerEvent>,
        nudge_sender: mpsc::Sender<()>,
        _state_receiver: watch::Receiver<S>,
        _resume_notifier: Arc<Notify>,
    }

    impl<S> ProcessHandler<S> {
        pub async fn until_completion(self) {
            let _ = self.join_handle.await;
        }
        pub fn try_nudge(&self) -> Result<(), mpsc::error::TrySendError<()>> {
            self.nudge_sender.try_send(())
        }
    }

    pub fn spawn<S, P>(local: &LocalSet, proc: &Rc<Mutex<P>>) -> ProcessHandler<S>
    where
        S: State + Default,
        P: Process<S> + 'static,
    {
        let (event_tx, mut event_rx) = mpsc::channel::<HandlerEvent>(10);
        let (nudge_tx, mut nudge_rx) = mpsc::channel::<()>(1);
        let (state_tx, state_rx) = watch::channel(S::default());
        let resume_notifier = Arc::new(Notify::new());
        let resume = resume_notifier.clone();
        let proc = proc.clone();
        let join_handle = local.spawn_local(async move {
            let _ = nudge_rx.recv().await;
            loop {
                while let Ok(event) = event_rx.try_recv() {
                    match event {
                        HandlerEvent::Kill => proc.lock().await.kill().await,
                        HandlerEvent::Pause => proc.lock().await.pause().await,
                    }
                }
                if proc.lock().await.is_done() {
                    drop(event_rx);
                    break;
                }
                if proc.lock().await.is_paused() {
                    resume.notified().await;
                }
                let mut p = proc.lock().await;
                p.advance().await;
                let _ = state_tx.send_replace(p.state().clone());
            }
        });
        ProcessHandler {
            join_handle,
            _event_sender: event_tx,
            nudge_sender: nudge_tx,
            _state_receiver: state_rx,
            _resume_notifier: resume_notifier,
        }
    }
}

// --- harness -----------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `f` on a fresh one-thread runtime and `LocalSet`, and times it.
fn timed<F, Fut>(f: F) -> Duration
where
    F: FnOnce(Rc<LocalSet>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = runtime();
    let local = Rc::new(LocalSet::new());
    let started = Instant::now();
    local.block_on(&rt, f(local.clone()));
    started.elapsed()
}

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    f(); // warm-up
    (0..runs).map(|_| f()).min().unwrap()
}

/// Runs every variant once per round, `runs` rounds, and keeps each one's best:
/// side by side, so that a noisy moment hits them alike.
fn interleaved(runs: usize, variants: &[&dyn Fn() -> Duration]) -> Vec<Duration> {
    for v in variants {
        v(); // warm-up
    }
    let mut best = vec![Duration::MAX; variants.len()];
    for _ in 0..runs {
        for (b, v) in best.iter_mut().zip(variants) {
            *b = (*b).min(v());
        }
    }
    best
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>12.0}/s", n as f64 / d.as_secs_f64())
}

fn per(n: usize, d: Duration) -> String {
    let ns = d.as_nanos() as f64 / n as f64;
    if ns >= 1_000_000.0 {
        format!("{:>9.2} ms", ns / 1e6)
    } else if ns >= 1000.0 {
        format!("{:>9.2} µs", ns / 1e3)
    } else {
        format!("{ns:>9.0} ns")
    }
}

fn row(label: &str, cols: &[String]) {
    print!("  {label:<44}");
    for c in cols {
        print!(" {c:>16}");
    }
    println!();
}

struct Sizes {
    procs: usize,
    steps: usize,
    kills: usize,
    heavy: usize,
    runs: usize,
}

fn main() {
    // A child of the cold section runs one measurement on a fresh heap.
    if let Ok(what) = std::env::var(CHILD) {
        cold_child(&what);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // SAFETY: mallopt only tunes glibc's allocator; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    let sizes = if full {
        Sizes { procs: 1_000_000, steps: 1_000_000, kills: 10_000, heavy: 100_000, runs: 3 }
    } else {
        Sizes { procs: 2_000, steps: 2_000, kills: 100, heavy: 500, runs: 1 }
    };
    println!(
        "drover-core runtime benchmarks ({} mode, {} CPUs)\n",
        if full { "full" } else { "smoke" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // `cargo bench ... -- a c` runs only sections (a) and (c).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|a| a == section);
    type Section = (&'static str, fn(&Sizes));
    let sections: [Section; 6] =
        [("cold", cold), ("a", throughput), ("b", memory), ("c", step_round_trip), ("d", kill_latency), ("e", pool)];
    for (name, bench) in sections {
        if run(name) {
            bench(&sizes);
        }
    }
}

// --- the workloads (a), (b) and the cold section share ---------------------------

/// `n` bare tasks, each computing an add, spawned, then awaited.
async fn bare_adds(local: &LocalSet, n: usize) {
    let handles: Vec<_> = (0..n as i32)
        .map(|i| {
            local.spawn_local(async move {
                let add = AddProc::new(i, 4);
                black_box(add.inp1 + add.inp2)
            })
        })
        .collect();
    for h in handles {
        black_box(h.await.unwrap());
    }
}

/// `n` seed-style add processes (`Rc<Mutex<P>>`), each launched as it is
/// spawned, as a user launches one, then awaited.
async fn seed_adds(local: &LocalSet, n: usize) {
    let procs: Vec<_> = (0..n as i32).map(|i| Rc::new(Mutex::new(AddProc::new(i, 4)))).collect();
    let handlers: Vec<_> = procs
        .iter()
        .map(|p| {
            let h = spawn(local, p, DriveMode::FireAndForget);
            h.try_nudge().unwrap();
            h
        })
        .collect();
    for h in handlers {
        h.until_completion().await;
    }
    assert!(procs.iter().all(|p| p.try_lock().unwrap().output.is_some()));
}

/// `n` bare tasks that wait for a nudge, with their handles.
fn park_bare(local: &LocalSet, n: usize, nudge: &tokio::sync::broadcast::Sender<()>) -> Box<dyn std::any::Any> {
    let handles: Vec<_> = (0..n as i32)
        .map(|i| {
            let mut nudge = nudge.subscribe();
            local.spawn_local(async move {
                let _ = nudge.recv().await;
                let add = AddProc::new(i, 4);
                black_box(add.inp1 + add.inp2)
            })
        })
        .collect();
    Box::new(handles)
}

/// Runs `local` until each of the `n` tasks or processes spawned on it has been
/// polled and waits: the `LocalSet` queue is FIFO, so each yield lets every
/// task queued before it run once, and drover's runner polls at least one
/// process per turn.
fn park(rt: &tokio::runtime::Runtime, local: &LocalSet, n: usize) {
    local.block_on(rt, async {
        for _ in 0..=n {
            tokio::task::yield_now().await;
        }
    });
}

/// `n` seed-style add processes that wait for their nudge, with their handlers.
fn park_seed(local: &LocalSet, n: usize) -> Box<dyn std::any::Any> {
    let procs: Vec<_> = (0..n as i32).map(|i| Rc::new(Mutex::new(AddProc::new(i, 4)))).collect();
    let handlers: Vec<_> = procs.iter().map(|p| spawn(local, p, DriveMode::FireAndForget)).collect();
    Box::new((procs, handlers))
}

// --- (cold) --------------------------------------------------------------------

/// The variable that makes this binary a child of the cold section:
/// `VARIANT:N`.
const CHILD: &str = "DROVER_BENCH_CHILD";

/// What a child measured.
struct ColdFigures {
    secs: f64,
    allocs: f64,
    rss: f64,
    heap: f64,
}

/// Runs one cold measurement in a fresh process: this binary, re-executed.
#[allow(clippy::disallowed_methods, reason = "the bench re-executes itself, no external command")]
fn in_child(variant: &str, n: usize) -> ColdFigures {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let out = std::process::Command::new(exe)
        .env(CHILD, format!("{variant}:{n}"))
        .output()
        .expect("re-executing the bench binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cold child {variant} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("cold child {variant} printed no {name}: {text}"))
    };
    ColdFigures { secs: field("secs"), allocs: field("allocs"), rss: field("rss"), heap: field("heap") }
}

/// The resident set of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The child's side: one variant, `n` processes (or tasks), on glibc's
/// default heap, and one line of `name=value` figures per process.
fn cold_child(what: &str) {
    let (variant, n) = what.split_once(':').expect("VARIANT:N");
    let n: usize = n.parse().expect("a count");
    let rt = runtime();
    let local = Rc::new(LocalSet::new());
    let (rss0, heap0, allocs0) = (rss(), live(), allocs());
    let started = Instant::now();
    match variant {
        "bare" => local.block_on(&rt, bare_adds(&local, n)),
        "drover" => local.block_on(&rt, seed_adds(&local, n)),
        "bare-parked" | "drover-parked" => {
            let (nudge, _) = tokio::sync::broadcast::channel::<()>(1);
            let keep: Box<dyn std::any::Any> =
                if variant == "bare-parked" { park_bare(&local, n, &nudge) } else { park_seed(&local, n) };
            park(&rt, &local, n);
            let (rss1, heap1, allocs1) = (rss(), live(), allocs());
            println!(
                "secs=0 allocs={} rss={} heap={}",
                (allocs1 - allocs0) as f64 / n as f64,
                rss1.saturating_sub(rss0) as f64 / n as f64,
                (heap1 - heap0) as f64 / n as f64,
            );
            drop(keep);
            return;
        }
        other => panic!("no cold variant {other}"),
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "secs={secs} allocs={} rss={} heap=0",
        (allocs() - allocs0) as f64 / n as f64,
        rss().saturating_sub(rss0) as f64 / n as f64
    );
}

fn cold(sizes: &Sizes) {
    let n = sizes.procs;
    let runs = sizes.runs;
    println!(
        "(cold) {n} seed-style add processes on a fresh runtime in a fresh process each (best of {runs}, interleaved)"
    );
    row("", &["wall".into(), "rate".into(), "allocs each".into(), "vs bare".into()]);
    let mut best: [Option<ColdFigures>; 2] = [None, None];
    for _ in 0..runs {
        for (b, variant) in best.iter_mut().zip(["bare", "drover"]) {
            let f = in_child(variant, n);
            if b.as_ref().is_none_or(|b| f.secs < b.secs) {
                *b = Some(f);
            }
        }
    }
    let [Some(bare), Some(drover)] = best else { unreachable!() };
    let labels = ["bare spawn_local tasks", "drover spawn (Rc<Mutex<P>>, seed API)"];
    for (label, f) in labels.iter().zip([&bare, &drover]) {
        row(
            label,
            &[
                format!("{:.3} s", f.secs),
                format!("{:>12.0}/s", n as f64 / f.secs),
                format!("{:.2}", f.allocs),
                format!("{:.2}x", f.secs / bare.secs),
            ],
        );
    }
    println!("  goal: drover within 2.5x of bare");
    println!("  RSS per process parked waiting for its nudge ({n} parked, fresh process each)");
    row("", &["RSS each".into(), "heap each".into(), "allocs each".into(), "vs bare".into()]);
    let bare = in_child("bare-parked", n);
    let drover = in_child("drover-parked", n);
    let labels = ["bare spawn_local tasks (await a nudge)", "drover spawn (Rc<Mutex<P>> + handler)"];
    for (label, f) in labels.iter().zip([&bare, &drover]) {
        row(
            label,
            &[
                format!("{:.0} B", f.rss),
                format!("{:.0} B", f.heap),
                format!("{:.2}", f.allocs),
                format!("{:.2}x", f.rss / bare.rss),
            ],
        );
    }
    println!("  goal: drover < 600 B of RSS per parked process\n");
}

// --- (a) -----------------------------------------------------------------------

fn throughput(sizes: &Sizes) {
    let n = sizes.procs;
    println!(
        "(a) {n} add processes spawned, launched and completed on one thread (best of {}, interleaved)",
        sizes.runs
    );
    row("", &["wall".into(), "rate".into(), "per process".into(), "vs bare".into()]);

    let bare = || timed(|local| async move { bare_adds(&local, n).await });
    let shared = || timed(|local| async move { seed_adds(&local, n).await });
    let owned = || {
        timed(|local| async move {
            let handlers: Vec<_> = (0..n as i32)
                .map(|i| {
                    let h = spawn_owned(&local, AddProc::new(i, 4), DriveMode::FireAndForget);
                    h.try_nudge().unwrap();
                    h
                })
                .collect();
            for h in handlers {
                assert!(h.join().await.unwrap().output.is_some());
            }
        })
    };
    let seed = || {
        timed(|local| async move {
            let procs: Vec<_> = (0..n as i32).map(|i| Rc::new(Mutex::new(AddProc::new(i, 4)))).collect();
            let handlers: Vec<_> = procs
                .iter()
                .map(|p| {
                    let h = seed_design::spawn(&local, p);
                    h.try_nudge().unwrap();
                    h
                })
                .collect();
            for h in handlers {
                h.until_completion().await;
            }
        })
    };
    let best = interleaved(sizes.runs, &[&bare, &shared, &owned, &seed]);
    let labels = [
        "bare spawn_local tasks",
        "drover spawn (Rc<Mutex<P>>, seed API)",
        "drover spawn_owned (lock-free)",
        "the seed's design as written",
    ];
    for (label, d) in labels.iter().zip(&best) {
        row(
            label,
            &[
                format!("{:.3} s", d.as_secs_f64()),
                rate(n, *d),
                per(n, *d),
                format!("{:.2}x", d.as_secs_f64() / best[0].as_secs_f64()),
            ],
        );
    }
    println!("  goal: drover >= 1,000,000/s and within 3x of bare\n");
}

// --- (b) -----------------------------------------------------------------------

fn memory(sizes: &Sizes) {
    let n = sizes.procs;
    println!("(b) live heap per process while {n} processes wait for their nudge");
    row("", &["bytes each".into(), "vs bare".into()]);
    let rt = runtime();

    let measure = |label: &str, spawn_all: &dyn Fn(&LocalSet) -> Box<dyn std::any::Any>| {
        let local = LocalSet::new();
        let before = live();
        let keep = spawn_all(&local);
        park(&rt, &local, n);
        let bytes = (live() - before) as f64 / n as f64;
        drop(keep);
        drop(local);
        (label.to_owned(), bytes)
    };

    let (notify_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let bare = measure("bare spawn_local tasks (await a nudge)", &|local| park_bare(local, n, &notify_tx));
    let shared = measure("drover spawn (Rc<Mutex<P>> + handler)", &|local| park_seed(local, n));
    let owned = measure("drover spawn_owned (+ handler)", &|local| {
        let handlers: Vec<ProcessHandler<DummyState, AddProc>> =
            (0..n as i32).map(|i| spawn_owned(local, AddProc::new(i, 4), DriveMode::FireAndForget)).collect();
        Box::new(handlers)
    });
    let seed = measure("the seed's design as written", &|local| {
        let procs: Vec<_> = (0..n as i32).map(|i| Rc::new(Mutex::new(AddProc::new(i, 4)))).collect();
        let handlers: Vec<_> = procs.iter().map(|p| seed_design::spawn(local, p)).collect();
        Box::new((procs, handlers))
    });
    for (label, bytes) in [&bare, &shared, &owned, &seed] {
        row(label, &[format!("{bytes:.0} B"), format!("{:.2}x", bytes / bare.1)]);
    }
    println!("  goal: drover <= 1024 B per process\n");
}

// --- (c) -----------------------------------------------------------------------

/// Counts up to `target`, one per step.
struct Counter {
    state: Count,
}

#[derive(Clone, Debug)]
struct Count {
    n: usize,
    target: usize,
}

impl State for Count {
    fn is_done(&self) -> bool {
        self.n >= self.target
    }
    fn is_paused(&self) -> bool {
        false
    }
}

impl Process<Count> for Counter {
    fn state(&self) -> &Count {
        &self.state
    }
    fn transition_to(&mut self, state: Count) {
        self.state = state;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        self.state.n += 1;
    }
}

fn step_round_trip(sizes: &Sizes) {
    let n = sizes.steps;
    println!(
        "(c) Step round trip: nudge, advance, new state seen by a watcher ({n} steps, best of {}, interleaved)",
        sizes.runs
    );
    row("", &["per step".into(), "vs bare".into()]);

    let bare = || {
        timed(|_| async move {
            // Two bare tasks: one nudges through a Notify, the other steps and
            // publishes through a watch.
            let nudge = Rc::new(tokio::sync::Notify::new());
            let (tx, mut rx) = tokio::sync::watch::channel(0usize);
            let stepper = {
                let nudge = nudge.clone();
                tokio::task::spawn_local(async move {
                    for i in 1..=n {
                        nudge.notified().await;
                        tx.send_replace(i);
                    }
                })
            };
            for i in 1..=n {
                nudge.notify_one();
                rx.changed().await.unwrap();
                assert_eq!(*rx.borrow_and_update(), i);
            }
            stepper.await.unwrap();
        })
    };
    let drover = || {
        timed(|local| async move {
            let handler = spawn_owned(&local, Counter { state: Count { n: 0, target: n } }, DriveMode::Step);
            let mut rx = handler.subscribe();
            for i in 1..=n {
                handler.try_nudge().unwrap();
                rx.changed().await.ok();
                assert_eq!(rx.borrow_and_update().n, i);
            }
            assert!(handler.join().await.is_ok());
        })
    };
    let [bare, drover] = interleaved(sizes.runs, &[&bare, &drover])[..] else { unreachable!() };
    row("bare: Notify + watch between two tasks", &[per(n, bare), "1.00x".into()]);
    row("drover Step", &[per(n, drover), format!("{:.2}x", drover.as_secs_f64() / bare.as_secs_f64())]);
    println!("  goal: drover <= 1 µs per step\n");
}

// --- (d) -----------------------------------------------------------------------

/// Waits an hour inside `advance`.
struct Sleeper(DummyState);

impl Process<DummyState> for Sleeper {
    fn state(&self) -> &DummyState {
        &self.0
    }
    fn transition_to(&mut self, state: DummyState) {
        self.0 = state;
    }
    async fn kill(&mut self) {
        self.0 = DummyState::End;
    }
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        self.0 = DummyState::End;
    }
}

fn percentiles(mut v: Vec<Duration>) -> [String; 4] {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    [per(1, mean), per(1, at(0.5)), per(1, at(0.99)), per(1, *v.last().unwrap())]
}

fn kill_latency(sizes: &Sizes) {
    let n = sizes.kills;
    println!("(d) kill latency of a process waiting an hour inside advance ({n} kills)");
    row("", &["mean".into(), "p50".into(), "p99".into(), "max".into()]);
    let rt = runtime();

    let local = LocalSet::new();
    let bare = local.block_on(&rt, async {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let task = tokio::task::spawn_local(tokio::time::sleep(Duration::from_secs(3600)));
            tokio::task::yield_now().await;
            let started = Instant::now();
            task.abort();
            let _ = task.await;
            lat.push(started.elapsed());
        }
        lat
    });
    row("bare: JoinHandle::abort + await", &percentiles(bare));

    let local = Rc::new(LocalSet::new());
    let ours = local.block_on(&rt, {
        let local = local.clone();
        async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let handler = spawn_owned(&local, Sleeper(DummyState::Begin), DriveMode::FireAndForget);
                handler.try_nudge().unwrap();
                tokio::task::yield_now().await;
                let started = Instant::now();
                handler.kill().await.unwrap();
                lat.push(started.elapsed());
            }
            lat
        }
    });
    row("drover kill().await (hook ran, process ended)", &percentiles(ours));
    println!("  goal: drover <= 1 ms\n");
}

// --- (e) -----------------------------------------------------------------------

fn pool(sizes: &Sizes) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("(e) the pool of single-threaded runtimes on {cpus} cores against one thread (best of {})", sizes.runs);
    row("", &["wall".into(), "rate".into(), "speed-up".into()]);

    let light = |p: usize| AddProc::new(p as i32, 4);
    let heavy = |p: usize| Heavy { add: AddProc::new(p as i32, 4), rounds: 20_000 };
    run_pool_case("trivial add", sizes.procs, sizes.runs, cpus, light);
    run_pool_case("add + ~20k multiply rounds of CPU", sizes.heavy, sizes.runs, cpus, heavy);
    println!("  the submitting thread shares the cores with the workers\n");
}

fn run_pool_case<P, F>(what: &str, n: usize, runs: usize, cpus: usize, make: F)
where
    P: Process<DummyState> + Send + 'static,
    F: Fn(usize) -> P + Copy,
{
    let one = best_of(runs, || {
        timed(|local| async move {
            let handlers: Vec<_> = (0..n).map(|i| spawn_owned(&local, make(i), DriveMode::FireAndForget)).collect();
            for h in &handlers {
                h.try_nudge().unwrap();
            }
            for h in handlers {
                h.join().await.unwrap();
            }
        })
    });
    row(&format!("{what}: one thread, {n}"), &[format!("{:.3} s", one.as_secs_f64()), rate(n, one), "1.00x".into()]);
    for threads in [1, cpus] {
        let d = best_of(runs, || {
            let pool = Pool::new(threads).unwrap();
            let rt = runtime();
            let started = Instant::now();
            let handlers: Vec<_> = (0..n).map(|i| pool.spawn(make(i), DriveMode::FireAndForget)).collect();
            for h in &handlers {
                h.try_nudge().unwrap();
            }
            rt.block_on(async {
                for h in handlers {
                    h.join().await.unwrap();
                }
            });
            started.elapsed()
        });
        row(
            &format!("{what}: pool of {threads}"),
            &[format!("{:.3} s", d.as_secs_f64()), rate(n, d), format!("{:.2}x", one.as_secs_f64() / d.as_secs_f64())],
        );
    }
}
