//! Request paths -> what they name: a resource type, maybe a namespace, maybe an object, maybe
//! a subresource. Only the REST layout of resources is understood (`/api/v1/...`,
//! `/apis/{group}/{version}/...`); discovery paths (`/api`, `/apis`, `/version`) are not.

/// A resource type as the URL names it: the group-version prefix and the plural, e.g.
/// (`/apis/apps/v1`, `statefulsets`). Versions are not converted: an object created through
/// one version is only seen through that version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceType {
    pub prefix: String,
    pub plural: String,
}

impl ResourceType {
    pub fn new(prefix: &str, plural: &str) -> ResourceType {
        ResourceType {
            prefix: prefix.trim_end_matches('/').to_owned(),
            plural: plural.to_owned(),
        }
    }
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: ResourceType,
    /// `None`: cluster-scoped, or a collection across all namespaces.
    pub namespace: Option<String>,
    /// `None`: the collection.
    pub name: Option<String>,
    /// `status`, `scale`, ... (only `status` is served).
    pub subresource: Option<String>,
}

impl Target {
    /// Parses `path` (no query). `None` when it is not a resource path.
    pub fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
            _ => return None,
        };
        let owned = |s: &&str| Some((*s).to_owned());
        let (namespace, rest) = match rest {
            // `/namespaces/{ns}/{plural}...`, but not the Namespace object's own subresources.
            ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
                (owned(ns), {
                    let mut v = vec![*plural];
                    v.extend_from_slice(tail);
                    v
                })
            }
            other => (None, other.to_vec()),
        };
        let (plural, name, subresource) = match rest.as_slice() {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, owned(name), None),
            [plural, name, sub] => (*plural, owned(name), owned(sub)),
            _ => return None,
        };
        if plural.is_empty() || name.as_deref() == Some("") {
            return None;
        }
        Some(Target {
            resource: ResourceType::new(&prefix, plural),
            namespace,
            name,
            subresource,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let t = Target::parse(path).unwrap();
        (
            format!("{}|{}", t.resource.prefix, t.resource.plural),
            t.namespace,
            t.name,
            t.subresource,
        )
    }

    #[test]
    fn paths_name_types_namespaces_objects_and_subresources() {
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            t("/apis/apps/v1/namespaces/kv/statefulsets/demo/status"),
            (
                "/apis/apps/v1|statefulsets".into(),
                s("kv"),
                s("demo"),
                s("status")
            )
        );
        assert_eq!(
            t("/apis/kvstore.dev/v1alpha1/kvclusters"),
            (
                "/apis/kvstore.dev/v1alpha1|kvclusters".into(),
                None,
                None,
                None
            )
        );
        assert_eq!(
            t("/api/v1/namespaces/kv/pods"),
            ("/api/v1|pods".into(), s("kv"), None, None)
        );
        assert_eq!(
            t("/api/v1/namespaces/kv"),
            ("/api/v1|namespaces".into(), None, s("kv"), None)
        );
        assert_eq!(
            t("/api/v1/namespaces/kv/status"),
            ("/api/v1|namespaces".into(), None, s("kv"), s("status"))
        );
        assert!(Target::parse("/version").is_none());
        assert!(Target::parse("/apis").is_none());
    }
}
