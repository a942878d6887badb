//! The static member list: `--backend NAME=URL`, or the seed's bare `host:port`.

use super::{BackendUrl, Member};

/// Parses one `--backend` value.
///
/// `NAME=URL` names the member explicitly. A bare `host:port` is the seed's
/// `BACKEND_SERVERS` form: the member is named by that exact string (so keys land where the
/// seed put them) and reached at `http://host:port`.
pub fn parse_backend(spec: &str) -> Result<Member, String> {
    let spec = spec.trim();
    let (name, url) = match spec.split_once('=') {
        Some((name, url)) => (name.trim().to_owned(), url.trim().to_owned()),
        None if !spec.contains("://") => (spec.to_owned(), format!("http://{spec}")),
        None => return Err(format!("'{spec}': expected NAME=URL or host:port")),
    };
    if name.is_empty() {
        return Err(format!("'{spec}': empty server name"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("'{spec}': control characters in the server name"));
    }
    Ok(Member {
        name,
        url: BackendUrl::parse(&url)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse() {
        let m = parse_backend("kv-1=http://127.0.0.1:8081").unwrap();
        assert_eq!(
            (m.name.as_str(), m.url.to_string().as_str()),
            ("kv-1", "http://127.0.0.1:8081")
        );
        let m = parse_backend(" server-1:8080 ").unwrap();
        assert_eq!(
            (m.name.as_str(), m.url.to_string().as_str()),
            ("server-1:8080", "http://server-1:8080")
        );
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "=http://x:1",
            "http://x:1",
            "a=",
            "a=https://x:1",
            "a=http://x:1/path",
        ] {
            assert!(parse_backend(bad).is_err(), "{bad}");
        }
    }
}
