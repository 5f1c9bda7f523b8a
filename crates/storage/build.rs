//! The migrations are embedded in the crate (`embed_migrations!`), which reads their
//! folders when it compiles: a migration added to a folder must compile it again.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
