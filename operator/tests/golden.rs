//! Golden files: the example KvClusters in `crds/examples/` rendered to their children, held
//! byte for byte. After an intended change, rewrite them with
//! `UPDATE_GOLDEN=1 cargo test -p kv-operator --test golden` and review the diff.

use std::path::PathBuf;

use kube::Resource;
use kv_crds::KvCluster;
use kv_operator::RenderConfig;
use kv_operator::plan::Plan;
use kv_operator::render::render;

fn check(example: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = root
        .join("../crds/examples")
        .join(format!("{example}.yaml"));
    let mut cluster: KvCluster =
        serde_saphyr::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
    // What the API server adds on create.
    cluster.meta_mut().uid = Some("00000000-0000-4000-8000-000000000000".into());
    cluster.meta_mut().generation = Some(1);
    let config = RenderConfig {
        server_image: "kvstore/kv-server:golden".into(),
        gateway_image: "kvstore/kv-gateway:golden".into(),
        operator_namespace: Some("kv-system".into()),
        ..RenderConfig::default()
    };
    let plan = Plan::new(&cluster, None);
    let rendered = render(&cluster, &plan, &config).unwrap().to_yaml();

    let golden = root.join("tests/golden").join(format!("{example}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if expected != rendered {
        let line = expected
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b);
        panic!(
            "{} drifted from the renderer (first difference at line {}): if intended, run \
             `UPDATE_GOLDEN=1 cargo test -p kv-operator --test golden` and review the diff",
            golden.display(),
            line.map_or("end".to_owned(), |l| (l + 1).to_string()),
        );
    }
}

#[test]
fn minimal_example_renders_as_golden() {
    check("minimal");
}

#[test]
fn full_example_renders_as_golden() {
    check("full");
}
