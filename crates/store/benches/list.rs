//! The process list at a million processes: a store holding 1,000,000
//! ended processes (and a thousand unfinished ones) answers the first page of
//! `list` from a freshly opened store (cold: its first query, with the
//! operating system's page cache dropped where this process may), then warm;
//! a page deep in the list (by its cursor), filtered pages, and the counts
//! per status that `GET /v1/processes` adds to its first page. Each figure is
//! printed beside a full pass over the table (`COUNT(*)`) of the same run,
//! what any unpaged list costs at least.
//!
//! `cargo bench -p drover-store --bench list` runs it at full size (a few
//! minutes, most of it inserting); `-- --size N` sets the number of
//! processes.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use drover_store::{Cursor, ListFilter, NewProcess, PageLimit, Store, encode};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Demo {
    Queued,
    Finished { exit_code: i32 },
}

impl drover_store::Checkpoint for Demo {
    const KIND: &'static str = "shell";
    const VERSION: u32 = 1;
}

fn timed<T>(rt: &tokio::runtime::Runtime, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = rt.block_on(f);
    (out, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:>9.2} ms", d.as_secs_f64() * 1000.0)
}

/// Asks the kernel to forget its cached pages (needs root; says whether it could).
fn drop_page_cache() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args
        .iter()
        .position(|a| a == "--size")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if args.iter().any(|a| a == "--bench") { 1_000_000 } else { 10_000 });
    let active = (size / 1000).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `--db PATH` keeps the store for the next run, which then inserts nothing.
    let path = args
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| dir.path().join("list.db").display().to_string(), Clone::clone);
    let path = path.as_str();
    println!("drover-store list benchmark: {size} ended processes and {active} unfinished ones, in SQLite\n");

    let store = rt.block_on(Store::open(path)).unwrap();
    let have = usize::try_from(rt.block_on(store.count()).unwrap()).unwrap_or(0);
    let size = if have > 0 { have - active } else { size };
    let spec = r#"{"kind":"shell","spec":{"program":"true","args":[]}}"#.to_owned();
    let (_, inserted) = timed(&rt, async {
        let batch = 10_000;
        for start in (have..size + active).step_by(batch) {
            let ids: Vec<String> =
                (start..(start + batch).min(size + active)).map(|i| format!("run-x.job{i:07}")).collect();
            let new = ids.iter().map(|id| NewProcess::new(id.clone(), "shell", spec.clone(), encode(&Demo::Queued)));
            store.insert_all(new.collect()).await.unwrap();
            // Ended, but for the last `active`: one transition each, all at once (grouped commits).
            let ends = ids.iter().filter(|id| id.as_str() < format!("run-x.job{size:07}").as_str()).map(|id| {
                let store = store.clone();
                let id = id.clone();
                tokio::spawn(
                    async move { store.record(&id, encode(&Demo::Finished { exit_code: 0 }), false, true).await },
                )
            });
            for end in ends.collect::<Vec<_>>() {
                end.await.unwrap().unwrap();
            }
        }
    });
    println!("  inserted and ended them in {:.1} s", inserted.as_secs_f64());
    drop(store);

    let dropped = drop_page_cache();
    let (store, opened) = timed(&rt, Store::open(path));
    let store = store.unwrap();
    let all = ListFilter::default();
    let page = PageLimit::default();
    let (first, cold) = timed(&rt, store.list_page(&all, None, page));
    let first = first.unwrap();
    assert_eq!(first.processes.len(), page.get());
    let (_, warm) = timed(&rt, store.list_page(&all, None, page));
    println!(
        "  opened the store in {}; page cache {}",
        ms(opened),
        if dropped { "dropped first" } else { "not dropped (not root): cold means a freshly opened store" }
    );
    let (_, full_pass) = timed(&rt, store.count());
    println!(
        "  first page of {} (cold)       {}   beside a full pass (COUNT(*)): {}",
        page.get(),
        ms(cold),
        ms(full_pass)
    );
    println!("  first page of {} (warm)       {}", page.get(), ms(warm));
    let middle = rt.block_on(store.get(&format!("run-x.job{:07}", size / 2))).unwrap().unwrap();
    let (_, deep) = timed(&rt, store.list_page(&all, Some(&Cursor::after(&middle)), page));
    println!("  a page from the middle         {}", ms(deep));
    let mut cursor = first.next.clone();
    let (pages, walk) = timed(&rt, async {
        let mut n = 1;
        for _ in 0..20 {
            let next = store.list_page(&all, cursor.as_ref(), PageLimit::new(10_000).unwrap()).await.unwrap();
            n += 1;
            cursor = next.next;
        }
        n
    });
    println!("  {pages} pages of 10,000 in a row   {}  ({} per page)", ms(walk), ms(walk / pages));
    for (label, filter) in [
        ("state=active", ListFilter { state: Some("active".into()), ..ListFilter::default() }),
        ("state=finished", ListFilter { state: Some("finished".into()), ..ListFilter::default() }),
        ("kind=shell", ListFilter { kind: Some("shell".into()), ..ListFilter::default() }),
        ("computer=none-such", ListFilter { place: Some("none-such".into()), ..ListFilter::default() }),
    ] {
        let (got, d) = timed(&rt, store.list_page(&filter, None, page));
        println!("  first page, {label:<19} {}  ({} rows)", ms(d), got.unwrap().processes.len());
    }
    let (counts, counted) = timed(&rt, store.status_counts());
    println!("  counts per status              {}  ({:?})", ms(counted), counts.unwrap());
    println!("\n  goal: the first page (with its counts) well under a second at 1,000,000 processes");
}
