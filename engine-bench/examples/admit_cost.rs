//! Instructions per admission (create + drop of an engine), for `valgrind --tool=callgrind`:
//! `ours` creates and drops engines for 1,000 users round robin on one thread; `baseline`
//! counts up and down a per-user entry in a map behind one mutex (the admission row's floor).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Mutex;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ours = args.get(1).map_or("ours", String::as_str) == "ours";
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let users = engine_bench::bench_users(1000);
    if ours {
        let factory = engine_bench::bench_factory(16);
        for i in 0..n {
            drop(
                factory
                    .create_for_user(&users[i % users.len()])
                    .expect("admitted"),
            );
        }
    } else {
        let counts: Mutex<HashMap<engine_core::UserId, usize>> = Mutex::default();
        for i in 0..n {
            let user = users[i % users.len()].user_id();
            *counts
                .lock()
                .expect("lock")
                .entry(user.clone())
                .or_default() += 1;
            if let Some(c) = counts.lock().expect("lock").get_mut(user) {
                *c -= 1;
            }
        }
    }
    println!("{n} admissions");
}
