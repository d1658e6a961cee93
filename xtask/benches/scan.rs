//! Scan speed: `migrate --check`'s scan of a generated 100,000-line workspace, in lines per
//! second, beside the floor of reading and parsing the same files with `syn` alone.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xtask::scan::Workspace;

/// Writes a workspace of `files` files x ~500 lines: ordinary code with a sprinkling of legacy
/// names, definitions and statics, so every rule has work to do.
fn generate(root: &Path, files: usize) -> usize {
    let _ = std::fs::remove_dir_all(root);
    let src = root.join("app/src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"app\"]\nresolver = \"2\"\n",
    )
    .expect("write");
    std::fs::write(
        root.join("app/Cargo.toml"),
        "[package]\nname = \"gen-app\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    )
    .expect("write");
    let mut lines = 0;
    let mut lib = String::from("//! generated\n");
    for f in 0..files {
        lib.push_str(&format!("pub mod m{f};\n"));
        let mut text = String::from("//! generated module\nuse std::collections::HashMap;\nuse engine_compat::ExecutionEngine;\n\n");
        let mut i = 0;
        while text.lines().count() < 500 {
            text.push_str(&format!(
                "/// Item {i}.\npub struct Item{i} {{\n    pub name: String,\n    pub values: Vec<u64>,\n}}\n\n\
                 impl Item{i} {{\n    pub fn total(&self) -> u64 {{\n        self.values.iter().sum::<u64>() + {i}\n    }}\n\n\
                 pub fn describe(&self, e: &ExecutionEngine) -> String {{\n        format!(\"{{}} {{}}\", self.name, e.engine_id())\n    }}\n}}\n\n\
                 pub fn make{i}(map: &HashMap<String, u64>) -> Option<u64> {{\n    map.get(\"k{i}\").copied().map(|v| v * 2)\n}}\n\n"
            ));
            i += 1;
        }
        lines += text.lines().count();
        std::fs::write(src.join(format!("m{f}.rs")), text).expect("write");
    }
    lines += lib.lines().count();
    std::fs::write(src.join("lib.rs"), lib).expect("write");
    lines
}

fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(walkdir::DirEntry::into_path)
        .collect();
    v.sort();
    v
}

fn scan(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/scan-bench-workspace");
    let lines = generate(&root, 200);
    let ws = Workspace::load(&root.join("Cargo.toml")).expect("generated workspace loads");
    let mut g = c.benchmark_group("scan");
    g.sample_size(10);
    g.throughput(Throughput::Elements(lines as u64));
    g.bench_function("ours", |b| {
        b.iter(|| {
            let s = ws.scan().expect("scans");
            assert!(s.lines >= 100_000);
            s.findings.len()
        });
    });
    let files = rust_files(&root);
    g.bench_function("baseline", |b| {
        b.iter(|| {
            files
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(f).expect("read");
                    let file = syn::parse_file(&text).expect("parse");
                    proc_macro2::extra::invalidate_current_thread_spans();
                    file.items.len()
                })
                .sum::<usize>()
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).configure_from_args();
    targets = scan
}
criterion_main!(benches);
