//! `crdgen`: writes the `KvCluster` CRD YAML to `crds/kvcluster.yaml` (or to stdout with `-`).
//!
//! Usage: `cargo run -p kv-crds --bin crdgen [PATH|-]`.

use std::path::PathBuf;

fn main() {
    let yaml = kv_crds::crd_yaml();
    let target = std::env::args().nth(1);
    if target.as_deref() == Some("-") {
        print!("{yaml}");
        return;
    }
    let path = target
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(kv_crds::CRD_FILE));
    if let Err(err) = std::fs::write(&path, yaml) {
        eprintln!("crdgen: cannot write {}: {err}", path.display());
        std::process::exit(1);
    }
    eprintln!("crdgen: wrote {}", path.display());
}
