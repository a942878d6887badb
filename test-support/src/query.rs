//! Query parameters, and the label and field selectors they carry.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined
//! by commas (all must hold). Field selectors: `path=v`, `path==v`, `path!=v` on any dotted
//! path of string (or scalar) fields, e.g. `metadata.name=x`.

use serde_json::Value;

/// The parameters this fake understands; the rest are ignored.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub watch: bool,
    /// `0` (or absent) means "any": a watch then starts with the current objects.
    pub resource_version: u64,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub timeout_seconds: Option<u64>,
    pub field_manager: Option<String>,
    pub force: bool,
    pub propagation_policy: Option<String>,
}

impl Params {
    pub fn parse(query: &str) -> Result<Params, String> {
        let mut params = Params::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match name {
                "watch" => params.watch = value == "true" || value == "1",
                "resourceVersion" => params.resource_version = value.parse().unwrap_or(0),
                "labelSelector" => params.labels = LabelSelector::parse(&value)?,
                "fieldSelector" => params.fields = FieldSelector::parse(&value)?,
                "timeoutSeconds" => params.timeout_seconds = value.parse().ok(),
                "fieldManager" => params.field_manager = Some(value),
                "force" => params.force = value == "true",
                "propagationPolicy" => params.propagation_policy = Some(value),
                _ => {}
            }
        }
        Ok(params)
    }

    /// Whether `object` matches both selectors.
    pub fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut out = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || format!("invalid label selector term {term:?}");
            let requirement = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim_start_matches('=').trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if let Some((k, set)) = term.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), parse_set(set).ok_or_else(bad)?)
            } else if let Some((k, set)) = term.split_once(" in ") {
                Requirement::In(k.trim().into(), parse_set(set).ok_or_else(bad)?)
            } else if term.contains(' ') || term.contains('(') {
                return Err(bad());
            } else {
                Requirement::Exists(term.into())
            };
            out.push(requirement);
        }
        Ok(LabelSelector(out))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|l| set.iter().any(|v| v == l)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|l| set.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Commas inside `( )` belong to a set, not to the list of terms.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// A parsed field selector: (dotted path, value, equal?) terms.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                out.push((k.to_owned(), v.to_owned(), false));
            } else if let Some((k, v)) = term.split_once('=') {
                out.push((k.to_owned(), v.trim_start_matches('=').to_owned(), true));
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            }
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, want, equal)| {
            let found = path
                .split('.')
                .try_fold(object, |v, k| v.get(k))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (found == *want) == *equal
        })
    }
}

/// Decodes `%XX` escapes and `+`.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_watcher_query() {
        let p = Params::parse(
            "labelSelector=kubernetes.io%2Fservice-name%3Dkv&watch=true&resourceVersion=7",
        )
        .unwrap();
        assert!(p.watch);
        assert_eq!(p.resource_version, 7);
        let object = json!({"metadata": {"labels": {"kubernetes.io/service-name": "kv"}}});
        assert!(p.selects(&object));
        assert!(!p.selects(&json!({"metadata": {}})));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%2F"), "a/");
    }

    #[test]
    fn set_based_selectors() {
        let s =
            LabelSelector::parse("app in (kv, other),tier notin (db),!legacy,zone,x!=1").unwrap();
        let obj = |labels: Value| json!({ "metadata": { "labels": labels } });
        assert!(s.matches(&obj(json!({"app": "kv", "tier": "web", "zone": "a"}))));
        assert!(s.matches(&obj(json!({"app": "other", "zone": "a", "x": "2"}))));
        assert!(!s.matches(&obj(json!({"app": "kv", "tier": "db", "zone": "a"}))));
        assert!(!s.matches(&obj(json!({"app": "kv", "zone": "a", "legacy": "y"}))));
        assert!(!s.matches(&obj(json!({"app": "kv"}))));
        assert!(!s.matches(&obj(json!({"app": "kv", "zone": "a", "x": "1"}))));
        assert!(LabelSelector::parse("app in kv").is_err());
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=b").unwrap();
        assert!(f.matches(&json!({"metadata": {"name": "a", "namespace": "c"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "a", "namespace": "b"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "z"}})));
    }
}
