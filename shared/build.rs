// `embed_migrations!` reads ../migrations at compile time: rebuild when it changes
// (a new migration directory otherwise leaves a stale set compiled in).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
