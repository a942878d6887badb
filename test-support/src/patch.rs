//! The patch flavours, applied to JSON objects.
//!
//! - JSON patch (`application/json-patch+json`, RFC 6902) and merge patch
//!   (`application/merge-patch+json`, RFC 7386): exact, through the `json-patch` crate.
//! - Strategic merge patch (`application/strategic-merge-patch+json`): treated as a merge
//!   patch, so lists are replaced whole instead of merged by their key (`name`, ...).
//! - Server-side apply (`application/apply-patch+yaml`): a pragmatic stand-in. The real thing
//!   tracks which manager owns each field (`managedFields`), merges lists by key and reports
//!   conflicts. Here each field manager's last applied configuration is remembered, and an
//!   apply is a three-way merge: fields the manager applied last time and no longer applies are
//!   removed, maps are merged recursively, lists and scalars are replaced. There are no
//!   conflicts (every apply behaves as `force=true`), and `managedFields` is not written. The
//!   body must be JSON (what kube-rs sends; JSON is YAML).

use serde_json::{Map, Value};

/// How a PATCH body is to be applied, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 6902. Atomic: on error `doc` is unchanged.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(doc, &patch).map_err(|e| format!("JSON patch failed: {e}"))
}

/// RFC 7386.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// Server-side apply as a three-way merge (see the module doc): `last` is what the same
/// manager applied before (`Value::Null` if nothing), `applied` what it applies now.
pub fn apply(live: &mut Value, last: &Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            let empty = Map::new();
            let last = last.as_object().unwrap_or(&empty);
            for key in last.keys() {
                if !applied.contains_key(key) {
                    live.remove(key);
                }
            }
            for (key, value) in applied {
                if value.is_null() {
                    live.remove(key);
                    continue;
                }
                let previous = last.get(key).unwrap_or(&Value::Null);
                match live.get_mut(key) {
                    Some(slot) if slot.is_object() && value.is_object() => {
                        apply(slot, previous, value)
                    }
                    _ => {
                        live.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_removes_what_the_manager_stopped_applying_and_keeps_the_rest() {
        let mut live = json!({
            "metadata": { "labels": { "a": "1", "b": "2", "theirs": "x" } },
            "spec": { "replicas": 3, "ports": [1, 2], "other": true },
        });
        let last = json!({ "metadata": { "labels": { "a": "1", "b": "2" } },
                           "spec": { "replicas": 3, "ports": [1, 2] } });
        let now = json!({ "metadata": { "labels": { "a": "9" } },
                          "spec": { "replicas": 4, "ports": [3] } });
        apply(&mut live, &last, &now);
        assert_eq!(
            live,
            json!({
                "metadata": { "labels": { "a": "9", "theirs": "x" } },
                "spec": { "replicas": 4, "ports": [3], "other": true },
            })
        );
    }

    #[test]
    fn patches() {
        let mut doc = json!({ "a": { "b": 1, "c": [1] } });
        merge_patch(&mut doc, &json!({ "a": { "b": null, "d": 2 } }));
        assert_eq!(doc, json!({ "a": { "c": [1], "d": 2 } }));
        json_patch(
            &mut doc,
            &json!([{ "op": "add", "path": "/a/c/-", "value": 2 },
                    { "op": "test", "path": "/a/d", "value": 2 }]),
        )
        .unwrap();
        assert_eq!(doc, json!({ "a": { "c": [1, 2], "d": 2 } }));
        let failing = json!([{ "op": "remove", "path": "/a/d" },
                             { "op": "test", "path": "/a/d", "value": 2 }]);
        assert!(json_patch(&mut doc, &failing).is_err());
        assert_eq!(doc, json!({ "a": { "c": [1, 2], "d": 2 } }), "atomic");
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchKind::Apply)
        );
    }
}
