//! `cargo xtask`: workspace migration checks (filled in by the xtask issue).

fn main() {
    eprintln!("usage: cargo xtask <command>; no commands yet");
    std::process::exit(2);
}
