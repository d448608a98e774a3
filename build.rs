// `embed_migrations!` is a proc macro: without this, editing a migration's SQL would not
// rebuild the crate and the embedded copy would silently go stale.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
